"""The detection loop (R14): one pass every interval, in one transaction, one replica at a time.

The pass takes a transaction-level advisory lock or skips, so replicas never
compute side by side; a pass reads everything from the database, so the first
one after downtime sees the whole window again.
"""

from __future__ import annotations

import asyncio
from functools import partial

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.clock import Clock
from service.kit.db import Database
from service.kit.periodic import every
from service.signals.service import PassResult, detect_signals

log = structlog.get_logger("slotpool.signals")


async def _pass(session: AsyncSession, *, clock: Clock) -> PassResult | None:
    return await detect_signals(session=session, now=clock.now())


async def run_detection(db: Database, clock: Clock) -> PassResult | None:
    """One detection pass, committed; None when another replica was running it."""
    result = await db.run(partial(_pass, clock=clock))
    if result is not None and (result.raised or result.closed):
        log.info("scalping alerts changed", raised=result.raised, closed=result.closed)
    return result


async def detection_loop(db: Database, clock: Clock, *, interval: float, stop: asyncio.Event) -> None:
    """Run ``run_detection`` every ``interval`` seconds until ``stop`` is set."""
    await every(interval, partial(run_detection, db, clock), name="signals", stop=stop)
