"""slotpool: the referral slot pool service."""
