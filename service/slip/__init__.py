"""The printable referral slip and the patient notice (R11)."""
