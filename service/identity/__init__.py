"""Who is calling: API keys to callers, and the commission's suspensions in force (R14)."""
