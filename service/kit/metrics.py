"""Prometheus metrics, served on their own port (``SLOTPOOL_METRICS_PORT``), never on the API port."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram, start_http_server

HTTP_REQUESTS = Histogram(
    "slotpool_http_request_seconds",
    "HTTP request latency by route template and status.",
    ["method", "route", "status"],
)
BOOKINGS = Counter("slotpool_bookings_total", "Booking attempts by outcome code.", ["outcome"])
SLOTS_RETURNED = Counter("slotpool_slots_returned_total", "Reserved slots returned to the public (R6).")
LOOP_ERRORS = Counter("slotpool_loop_errors_total", "Background loop iterations that failed.", ["loop"])
WEBHOOK_ATTEMPTS = Counter("slotpool_webhook_attempts_total", "Webhook requests by outcome.", ["outcome"])


def serve_metrics(port: int | None, host: str) -> Any:
    """Serve /metrics on ``host:port`` from a daemon thread (``serve`` and ``worker``); None: not served.

    The API port has no /metrics: the figures (routes, outcomes, volumes) are for the
    operator's scraper on an internal network, not for API clients.
    """
    if port is None:
        return None
    server, _thread = start_http_server(port, addr=host)
    return server
