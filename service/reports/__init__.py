"""Compliance reports for the health commission (R1–R4, R6, R20)."""
