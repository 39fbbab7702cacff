"""The purge loop: stored Idempotency-Key answers are deleted once their 24-hour window has passed.

Each batch is one transaction that claims due rows with ``FOR UPDATE SKIP LOCKED``, so
replicas running it at once never wait on each other. Expiry is by the injected clock;
a replay after the window finds no answer and is booked as a new request.
"""

from __future__ import annotations

import asyncio
from functools import partial

import structlog

from service.kit.clock import Clock
from service.kit.db import Database
from service.kit.periodic import every
from service.referrals.idempotency import purge_idempotency_keys

log = structlog.get_logger("slotpool.purge")

PURGE_INTERVAL_SECONDS = 600.0
PURGE_BATCH_SIZE = 1000


async def purge_expired_answers(db: Database, clock: Clock, *, batch_size: int = PURGE_BATCH_SIZE) -> int:
    """Delete every stored answer past its window, one batch per transaction."""
    total = 0
    now = clock.now()
    while True:
        count = await db.run(
            lambda session: purge_idempotency_keys(session=session, now=now, batch_size=batch_size)
        )
        total += count
        if count < batch_size:
            break
    if total:
        log.info("idempotency answers purged", count=total)
    return total


async def purge_loop(
    db: Database, clock: Clock, *, interval: float = PURGE_INTERVAL_SECONDS, stop: asyncio.Event
) -> None:
    """Run ``purge_expired_answers`` every ``interval`` seconds until ``stop`` is set."""
    await every(interval, partial(purge_expired_answers, db, clock), name="purge", stop=stop)
