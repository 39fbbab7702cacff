"""The background jobs, one list for both ``serve`` and ``worker``.

Each job lives in its domain and runs on ``service.kit.periodic.every`` (or, for
delivery, on NOTIFY with a poll as the backstop). Every job is safe to run in several
replicas at once, so each process that runs jobs runs all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit import metrics
from service.kit.clock import Clock, SandboxClock
from service.kit.config import Settings
from service.kit.crypto import Crypto
from service.kit.db import Database
from service.kit.periodic import every
from service.outbox.backlog import read_backlog
from service.outbox.dispatcher import dispatch_loop
from service.referrals.purge import purge_loop
from service.referrals.waitlist.offers import waitlist_loop
from service.reports.summary import summary_loop
from service.sandbox.service import follow_clock
from service.signals.detection import detection_loop
from service.slots.release import release_lag, release_loop

# A reading that takes longer is abandoned (and counted in slotpool_loop_errors_total{loop="gauges"}):
# the gauges keep their last values and slotpool_gauges_read_timestamp_seconds shows their age.
GAUGES_STATEMENT_TIMEOUT_MS = 2000


async def read_gauges(db: Database, clock: Clock) -> None:
    """Read the outbox backlog, its oldest pending delivery's age, the dead letters and the release
    lag in one read-only transaction, and set their gauges (service/kit/metrics.py)."""

    async def read(session: AsyncSession) -> tuple[Any, float, float]:
        await session.connection(execution_options={"postgresql_readonly": True})
        await session.execute(text(f"SET LOCAL statement_timeout = '{GAUGES_STATEMENT_TIMEOUT_MS}ms'"))
        now = clock.now()
        backlog = await read_backlog(session=session, now=now)
        lag = await release_lag(session=session, now=now)
        return backlog, lag, now.timestamp()

    backlog, lag, read_at = await db.run(read, attempts=1)
    metrics.OUTBOX_BACKLOG.set(backlog.pending)
    metrics.OUTBOX_OLDEST_AGE.set(backlog.oldest_pending_age_seconds)
    metrics.WEBHOOK_DEAD_LETTERS.set(backlog.dead)
    metrics.RELEASE_LAG.set(lag)
    metrics.GAUGES_READ_AT.set(read_at)


async def gauges_loop(db: Database, clock: Clock, *, interval: float, stop: asyncio.Event) -> None:
    """``read_gauges`` every ``interval`` seconds until ``stop`` is set."""
    await every(interval, lambda: read_gauges(db, clock), name="gauges", stop=stop)


def background_loops(
    *,
    db: Database,
    clock: Clock,
    crypto: Crypto,
    settings: Settings,
    database_url: str,
    stop: asyncio.Event,
) -> list[Coroutine[Any, Any, None]]:
    """Release (R6), webhook delivery, scalping detection (R14), the idempotency purge, the
    waiting list's offer expiry, the
    closing of report days and the reading of the gauges, until ``stop``; in a sandbox, the
    follower of its clock first."""
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
        waitlist_loop(db, clock, crypto, interval=settings.waitlist_interval_seconds, stop=stop),
        summary_loop(db, clock, interval=settings.report_summary_interval_seconds, stop=stop),
        gauges_loop(db, clock, interval=settings.gauges_interval_seconds, stop=stop),
    ]
