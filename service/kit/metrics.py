"""Prometheus metrics, served on their own port (``SLOTPOOL_METRICS_PORT``), never on the API port."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Final

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

HTTP_REQUESTS = Histogram(
    "slotpool_http_request_seconds",
    "HTTP request latency by route template and status.",
    ["method", "route", "status"],
)
# outcome: "booked", a refusal's code, or "idempotent_replay" (an Idempotency-Key answered again
# with the stored booking: no new booking, so never counted as "booked").
BOOKINGS = Counter("slotpool_bookings_total", "Booking attempts by outcome code.", ["outcome"])
SLOTS_RETURNED = Counter("slotpool_slots_returned_total", "Reserved slots returned to the public (R6).")
LOOP_ERRORS = Counter("slotpool_loop_errors_total", "Background loop iterations that failed.", ["loop"])
WEBHOOK_ATTEMPTS = Counter("slotpool_webhook_attempts_total", "Webhook requests by outcome.", ["outcome"])

# Read from the database by a job (``service.jobs.read_gauges``), never at scrape time: a scrape
# reads memory only, so it is cheap and answers even when the database is slow or away. Every
# process that runs the jobs reads the same figures; under ``serve --workers`` the freshest
# reading of any worker is served ("mostrecent"), not a sum of copies.
_FRESHEST: Final = "mostrecent"
OUTBOX_BACKLOG = Gauge(
    "slotpool_outbox_backlog",
    "Webhook deliveries pending (waiting, backing off, or queued behind a failing head).",
    multiprocess_mode=_FRESHEST,
)
OUTBOX_OLDEST_AGE = Gauge(
    "slotpool_outbox_oldest_pending_age_seconds",
    "Age of the oldest pending webhook delivery (an endpoint's queue head); 0 when none is pending.",
    multiprocess_mode=_FRESHEST,
)
WEBHOOK_DEAD_LETTERS = Gauge(
    "slotpool_webhook_dead_letters",
    "Webhook deliveries dead-lettered and not replayed.",
    multiprocess_mode=_FRESHEST,
)
RELEASE_LAG = Gauge(
    "slotpool_release_lag_seconds",
    "How long the oldest reserved slot past its public_at has waited for the release (R6); 0 when none.",
    multiprocess_mode=_FRESHEST,
)
GAUGES_READ_AT = Gauge(
    "slotpool_gauges_read_timestamp_seconds",
    "Unix time of the last successful reading of the gauges above (alert when it grows old).",
    multiprocess_mode=_FRESHEST,
)


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
