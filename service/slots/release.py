"""The release loop (R6): reserved slots still unbooked at ``public_at`` return to the public.

Each batch is one transaction that claims due rows with ``FOR UPDATE SKIP
LOCKED``, so any number of replicas can run it at once and each slot is
returned exactly once. It reads everything from the database, so after
downtime the first pass catches up on every window that closed meanwhile.
A booking that raced it either locked the slot first (and the loop skips
it, then no longer sees it as reserved) or finds it already returned.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from functools import partial

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.kit.clock import Clock
from service.kit.context import Actor
from service.kit.db import Database
from service.kit.metrics import SLOTS_RETURNED
from service.kit.periodic import every
from service.models.slots import Slot
from service.slots.returns import emit_slots_returned

log = structlog.get_logger("slotpool.release")


async def return_unbooked_slots(*, session: AsyncSession, now: datetime, batch_size: int) -> int:
    """Return one batch of due slots; the count tells the caller whether to go on."""
    slots = list(
        await session.scalars(
            select(Slot)
            .where(Slot.status == "reserved", Slot.public_at <= now)
            .order_by(Slot.public_at, Slot.id)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
        )
    )
    if not slots:
        return 0
    for slot in slots:
        slot.status = "returned"
        slot.returned_at = now
    await emit_slots_returned(session=session, slots=slots, at=now)
    actor = Actor.system("release_loop", now=now)
    for hospital_id in sorted({s.hospital_id for s in slots}):
        mine = [s.id for s in slots if s.hospital_id == hospital_id]
        await record(
            session=session,
            actor=actor,
            action="slots.returned",
            hospital_id=hospital_id,
            reason="The public release window opened (R6).",
            detail={"slot_ids": mine},
        )
    await session.flush()
    return len(slots)


async def _return_batch(session: AsyncSession, *, now: datetime, batch_size: int) -> int:
    return await return_unbooked_slots(session=session, now=now, batch_size=batch_size)


async def release_due_slots(db: Database, clock: Clock, *, batch_size: int = 500) -> int:
    """Return every due slot, one batch per transaction, until none is left."""
    total = 0
    while True:
        count = await db.run(partial(_return_batch, now=clock.now(), batch_size=batch_size))
        total += count
        if count < batch_size:
            break
    if total:
        SLOTS_RETURNED.inc(total)
        log.info("slots returned to the public", count=total)
    return total


async def release_loop(
    db: Database, clock: Clock, *, interval: float, batch_size: int, stop: asyncio.Event
) -> None:
    """Run ``release_due_slots`` every ``interval`` seconds until ``stop`` is set."""
    await every(
        interval, partial(release_due_slots, db, clock, batch_size=batch_size), name="release", stop=stop
    )
