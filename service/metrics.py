"""Prometheus metrics served at /metrics."""

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Histogram(
    "slotpool_http_request_seconds",
    "HTTP request latency by route template and status.",
    ["method", "route", "status"],
)
BOOKINGS = Counter("slotpool_bookings_total", "Booking attempts by outcome code.", ["outcome"])
SLOTS_RETURNED = Counter("slotpool_slots_returned_total", "Reserved slots returned to the public (R6).")
LOOP_ERRORS = Counter("slotpool_loop_errors_total", "Background loop iterations that failed.", ["loop"])
WEBHOOK_ATTEMPTS = Counter("slotpool_webhook_attempts_total", "Webhook requests by outcome.", ["outcome"])
