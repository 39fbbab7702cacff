"""The kit: what every layer may use and which knows nothing of referrals: the database
unit, errors, clock, crypto, configuration, bounds and logging."""
