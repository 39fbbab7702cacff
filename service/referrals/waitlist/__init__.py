"""The waiting list (候补): entries, offers of freed slots, and their loop (docs/waitlist.md)."""
