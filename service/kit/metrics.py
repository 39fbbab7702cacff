"""Prometheus metrics, served on their own port (``SLOTPOOL_METRICS_PORT``), never on the API port."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

HTTP_REQUESTS = Histogram(
    "slotpool_http_request_seconds",
    "HTTP request latency by route template and status.",
    ["method", "route", "status"],
)
BOOKINGS = Counter("slotpool_bookings_total", "Booking attempts by outcome code.", ["outcome"])
SLOTS_RETURNED = Counter("slotpool_slots_returned_total", "Reserved slots returned to the public (R6).")
LOOP_ERRORS = Counter("slotpool_loop_errors_total", "Background loop iterations that failed.", ["loop"])
WEBHOOK_ATTEMPTS = Counter("slotpool_webhook_attempts_total", "Webhook requests by outcome.", ["outcome"])


def serve_metrics(port: int | None, host: str, *, multiprocess: bool = False) -> Any:
    """Serve /metrics on ``host:port`` from a daemon thread (``serve`` and ``worker``); None: not served.

    The API port has no /metrics: the figures (routes, outcomes, volumes) are for the
    operator's scraper on an internal network, not for API clients.

    ``multiprocess`` (``serve --workers``): the worker processes write their figures to a
    fresh directory named by ``PROMETHEUS_MULTIPROC_DIR``, which they inherit from this
    process, and /metrics serves their sum (prometheus_client's multiprocess mode).
    """
    if port is None:
        return None
    registry = REGISTRY
    if multiprocess:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="slotpool-metrics-")
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
