"""The release loop (R6): reserved slots still unbooked at ``public_at`` return to the public.

A slot held for a waiting-list offer (``offered``) returns too, and its pending offer lapses in
the same statement (docs/waitlist.md).

Each batch is one transaction of a few statements, however many slots it returns: one claims
the due rows with ``FOR NO KEY UPDATE SKIP LOCKED``, flips them to ``returned``, has the
database build each clinic session's ``slots.returned`` data and, through
``outbox.events.emit_selected``, writes those events and their deliveries; the audit gets one
entry per hospital. Any number of replicas can run it at once and each slot is returned
exactly once. It reads everything from the database, so after downtime the first pass
catches up on every window that closed meanwhile. A booking that raced it either locked the
slot first (and the loop skips it, then no longer sees it as reserved) or waits for the batch
to commit and finds the slot returned (``window_closed``). Batches are bounded
(``release_batch_size``) so that such a booking, or a hospital withdrawing a session, waits
for one short batch at most (docs/decisions.md, "The release").
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.kit.clock import Clock
from service.kit.context import Actor
from service.kit.db import Database
from service.kit.metrics import SLOTS_RETURNED
from service.kit.periodic import every
from service.outbox.events import EventRows, emit_selected
from service.slots.returns import RELEASE_SETTINGS_SQL, returned_event_data_sql, returned_slot_sql

log = structlog.get_logger("slotpool.release")

# Where a pass starts: before every slot.
_FIRST: tuple[datetime, int] = (datetime(1, 1, 1, tzinfo=UTC), 0)

# Due rows in the order of the partial index (public_at, session_id), from where the last batch
# ended, so a batch reads no more of the index than it returns; the ones another transaction
# holds skipped (a later pass takes them); flipped, found again by their row address (the lock
# keeps it); grouped by clinic session into one event's data each, in the index's order. The
# outbox writes the events and their deliveries in the same statement (``emit_selected``).
_DUE_RETURNED = f"""
    due AS (
        SELECT ctid FROM slots
        WHERE status IN ('reserved', 'offered') AND public_at <= :now
          AND (public_at, session_id) >= (:after_public_at, :after_session_id)
        ORDER BY public_at, session_id
        LIMIT :batch_size
        FOR NO KEY UPDATE SKIP LOCKED
    ),
    flipped AS (
        UPDATE slots AS s SET status = 'returned', returned_at = :now
        WHERE s.ctid = ANY(ARRAY(SELECT ctid FROM due))
        RETURNING s.id, s.session_id, s.number, s.external_id, s.starts_at, s.ends_at, s.public_at
    ),
    lapsed AS (
        UPDATE waitlist_offers AS o SET status = 'lapsed', closed_at = :now
        WHERE o.status = 'pending' AND o.slot_id IN (SELECT id FROM flipped)
        RETURNING o.id
    ),
    by_session AS (
        SELECT f.session_id, min(f.public_at) AS public_at,
               array_agg(f.id ORDER BY f.id) AS slot_ids,
               json_agg({returned_slot_sql("f")} ORDER BY f.number) AS slots
        FROM flipped AS f
        GROUP BY f.session_id
    ),
    returned AS (
        SELECT g.public_at, g.session_id, cs.hospital_id, g.slot_ids,
               {returned_event_data_sql(cs="cs", dept="dept", public_at="g.public_at", slots="g.slots")}
                   AS data,
               row_number() OVER (ORDER BY g.public_at, g.session_id) AS position
        FROM by_session AS g
        JOIN clinic_sessions AS cs ON cs.id = g.session_id
        JOIN departments AS dept ON dept.id = cs.department_id
    )"""


@dataclass(frozen=True)
class Batch:
    """What one batch returned, and where the next one starts."""

    count: int
    resume_at: tuple[datetime, int]


async def return_unbooked_slots(
    *, session: AsyncSession, now: datetime, batch_size: int, after: tuple[datetime, int] = _FIRST
) -> Batch:
    """Return one batch of due slots from ``after`` on; the count tells the caller whether to go on."""
    await session.execute(text(RELEASE_SETTINGS_SQL))
    due = EventRows(
        ctes=_DUE_RETURNED,
        relation="returned",
        params={
            "now": now,
            "batch_size": batch_size,
            "after_public_at": after[0],
            "after_session_id": after[1],
        },
        returning=("public_at", "session_id", "hospital_id", "slot_ids"),
    )
    rows = (await emit_selected(session=session, event_type="slots.returned", rows=due, at=now)).rows
    if not rows:
        return Batch(0, after)
    by_hospital: dict[int, list[int]] = {}
    for row in rows:
        by_hospital.setdefault(row.hospital_id, []).extend(row.slot_ids)
    actor = Actor.system("release_loop", now=now)
    for hospital_id in sorted(by_hospital):
        await record(
            session=session,
            actor=actor,
            action="slots.returned",
            hospital_id=hospital_id,
            reason="The public release window opened (R6).",
            detail={"slot_ids": sorted(by_hospital[hospital_id])},
        )
    await session.flush()
    # The last session may have more due slots than the batch took: the next batch starts at it.
    last = rows[-1]
    return Batch(sum(len(ids) for ids in by_hospital.values()), (last.public_at, last.session_id))


async def release_lag(*, session: AsyncSession, now: datetime) -> float:
    """Seconds the oldest reserved slot past its ``public_at`` has waited to be returned; 0 when
    the release is up to date. One entry of the due slots' partial index."""
    oldest = await session.scalar(
        text(
            "SELECT min(public_at) FROM slots WHERE status IN ('reserved', 'offered') AND public_at <= :now"
        ),
        {"now": now},
    )
    return 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())


async def _return_batch(
    session: AsyncSession, *, now: datetime, batch_size: int, after: tuple[datetime, int]
) -> Batch:
    return await return_unbooked_slots(session=session, now=now, batch_size=batch_size, after=after)


async def release_due_slots(db: Database, clock: Clock, *, batch_size: int = 10_000) -> int:
    """Return every due slot, one batch per transaction, until a batch comes back short."""
    total = 0
    after = _FIRST
    while True:
        batch = await db.run(partial(_return_batch, now=clock.now(), batch_size=batch_size, after=after))
        total += batch.count
        after = batch.resume_at
        if batch.count < batch_size:
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
