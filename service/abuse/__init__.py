"""Abuse limits: per-client rate limits, hotline verification attempts, request sizes."""
