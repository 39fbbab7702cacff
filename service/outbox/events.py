"""Writing outbox events and fanning them out to webhook deliveries.

Callers pass the session of the change, so the change, its event and its deliveries commit together.
``emit`` writes one event; ``emit_many`` writes any number of one type in one statement, for a
change that touches thousands of rows at once (the release, R6).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from service.models.events import EVENT_TYPES, EventType

CHANNEL = "slotpool_events"


def envelope(event_type: str, data: dict[str, Any], *, at: datetime) -> dict[str, Any]:
    """The Standard Webhooks body: type, timestamp, data."""
    return {"type": event_type, "timestamp": at.astimezone(UTC).isoformat(), "data": data}


async def emit(
    *,
    session: AsyncSession,
    hospital_id: int,
    event_type: EventType,
    data: dict[str, Any],
    at: datetime,
) -> int:
    """Write one event row for a hospital, and its webhook deliveries, in the caller's transaction.

    ``emit_many`` of one event: one statement, the wake-up included. Returns the event's id.
    """
    row = await _write(session, event_type, [(hospital_id, json.dumps(data))], at)
    event_id: int = row.first_event_id
    return event_id


# The events in the order given, each ``envelope()``'s body around its data (already JSON text,
# parsed once, here), then one pending delivery per endpoint of its hospital subscribed to the
# type (disabled endpoints too: their queue waits until they are re-enabled, so a hospital whose
# receiver answered 410 misses nothing; endpoints registered later never see older events).
# A NOTIFY wakes the dispatchers at commit when something was queued.
_EMIT_MANY = text(
    """
    WITH written AS (
        INSERT INTO events (hospital_id, type, payload, created_at)
        SELECT given.hospital_id, :event_type, (:head || given.data || '}')::jsonb, :at
        FROM unnest(CAST(:hospital_ids AS bigint[]), CAST(:data AS text[])) WITH ORDINALITY
             AS given (hospital_id, data, position)
        ORDER BY given.position
        RETURNING id, hospital_id
    ),
    queued AS (
        INSERT INTO webhook_deliveries (event_id, endpoint_id, status, attempts, next_attempt_at, created_at)
        SELECT written.id, endpoint.id, 'pending', 0, :at, :at
        FROM written
        JOIN webhook_endpoints AS endpoint
          ON endpoint.hospital_id = written.hospital_id AND :event_type = ANY(endpoint.event_types)
        RETURNING 1
    )
    SELECT deliveries, (SELECT min(id) FROM written) AS first_event_id,
           CASE WHEN deliveries > 0 THEN pg_notify(:channel, '') END AS woken
    FROM (SELECT count(*) AS deliveries FROM queued) AS counted
    """
)


async def emit_many(
    *,
    session: AsyncSession,
    event_type: EventType,
    events: Sequence[tuple[int, str]],
    at: datetime,
) -> int:
    """Write events of one type, ``(hospital_id, data as JSON text)`` each, and their deliveries.

    In the caller's transaction, in one statement whatever their number, with one NOTIFY for
    them all. ``data`` comes as JSON text so that a
    caller that had the database build it (``slots.release``) passes it on untouched; the
    caller answers for its shape, as with ``emit``. Returns the deliveries queued.
    """
    if not events:
        return 0
    deliveries: int = (await _write(session, event_type, events, at)).deliveries
    return deliveries


async def _write(
    session: AsyncSession, event_type: EventType, events: Sequence[tuple[int, str]], at: datetime
) -> Any:
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type}")
    body = json.dumps(envelope(event_type, {}, at=at))
    head = body.removesuffix("{}}")
    assert head != body, "the envelope ends with its data"
    return (
        await session.execute(
            _EMIT_MANY,
            {
                "event_type": event_type,
                "head": head,
                "at": at,
                "hospital_ids": [hospital_id for hospital_id, _ in events],
                "data": [data for _, data in events],
                "channel": CHANNEL,
            },
        )
    ).one()


async def notify_dispatchers(*, session: AsyncSession) -> None:
    """Wake the dispatchers when this transaction commits (PostgreSQL delivers NOTIFY at commit)."""
    await session.execute(text(f"NOTIFY {CHANNEL}"))
