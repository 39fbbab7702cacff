"""Scalping signals over sliding windows and the alerts they raise (R14)."""
