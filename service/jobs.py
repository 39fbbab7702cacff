"""The background jobs, one list for both ``serve`` and ``worker``.

Each job lives in its domain and runs on ``service.kit.periodic.every`` (or, for
delivery, on NOTIFY with a poll as the backstop). Every job is safe to run in several
replicas at once, so each process that runs jobs runs all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from service.kit.clock import Clock, SandboxClock
from service.kit.config import Settings
from service.kit.crypto import Crypto
from service.kit.db import Database
from service.outbox.dispatcher import dispatch_loop
from service.referrals.purge import purge_loop
from service.reports.summary import summary_loop
from service.sandbox.service import follow_clock
from service.signals.detection import detection_loop
from service.slots.release import release_loop


def background_loops(
    *,
    db: Database,
    clock: Clock,
    crypto: Crypto,
    settings: Settings,
    database_url: str,
    stop: asyncio.Event,
) -> list[Coroutine[Any, Any, None]]:
    """Release (R6), webhook delivery, scalping detection (R14), the idempotency purge and the
    closing of report days, until ``stop``; in a sandbox, the follower of its clock first."""
    follower = (
        [follow_clock(db, clock, interval=settings.sandbox_follow_seconds, stop=stop)]
        if isinstance(clock, SandboxClock)
        else []
    )
    return [
        *follower,
        release_loop(
            db,
            clock,
            interval=settings.release_interval_seconds,
            batch_size=settings.release_batch_size,
            stop=stop,
        ),
        # LISTEN holds a session, so it goes to PostgreSQL itself, never through a transaction pooler.
        dispatch_loop(
            db, clock, crypto, settings, database_url=settings.listen_database_url or database_url, stop=stop
        ),
        detection_loop(db, clock, interval=settings.signals_interval_seconds, stop=stop),
        purge_loop(db, clock, stop=stop),
        summary_loop(db, clock, interval=settings.report_summary_interval_seconds, stop=stop),
    ]
