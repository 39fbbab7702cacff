"""Booking limits (R14): per-policy caps that stop scalping before it happens."""
