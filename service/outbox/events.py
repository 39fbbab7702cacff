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

from service.models.events import EVENT_TYPES, Event, EventType

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
) -> Event:
    """Write one event row for a hospital, and its webhook deliveries, in the caller's transaction."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type}")
    event = Event(
        hospital_id=hospital_id,
        type=event_type,
        payload=envelope(event_type, data, at=at),
        created_at=at,
    )
    session.add(event)
    await session.flush()
    await fan_out(session=session, event=event)
    return event


# The events in the order given, each ``envelope()``'s body around its data (already JSON text,
# parsed once, here), then one pending delivery per endpoint of its hospital subscribed to the
# type: the fan-out of ``fan_out`` for all of them at once.
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
    SELECT (SELECT count(*) FROM written) AS events, (SELECT count(*) FROM queued) AS deliveries
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

    The same rows ``emit`` writes for each, in the caller's transaction, in one statement
    whatever their number, and one NOTIFY for them all. ``data`` comes as JSON text so that a
    caller that had the database build it (``slots.release``) passes it on untouched; the
    caller answers for its shape, as with ``emit``. Returns the deliveries queued.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type}")
    if not events:
        return 0
    body = json.dumps(envelope(event_type, {}, at=at))
    head = body.removesuffix("{}}")
    assert head != body, "the envelope ends with its data"
    row = (
        await session.execute(
            _EMIT_MANY,
            {
                "event_type": event_type,
                "head": head,
                "at": at,
                "hospital_ids": [hospital_id for hospital_id, _ in events],
                "data": [data for _, data in events],
            },
        )
    ).one()
    deliveries: int = row.deliveries
    if deliveries:
        await notify_dispatchers(session=session)
    return deliveries


async def notify_dispatchers(*, session: AsyncSession) -> None:
    """Wake the dispatchers when this transaction commits (PostgreSQL delivers NOTIFY at commit)."""
    await session.execute(text(f"NOTIFY {CHANNEL}"))


async def fan_out(*, session: AsyncSession, event: Event) -> int:
    """One pending delivery per endpoint of the event's hospital subscribed to its type.

    Disabled endpoints get theirs too: they wait in the endpoint's queue until it is
    re-enabled, so a hospital whose receiver answered 410 misses nothing. Endpoints
    registered later never see older events.
    """
    result = await session.execute(
        text(
            "INSERT INTO webhook_deliveries (event_id, endpoint_id, status, attempts, next_attempt_at, created_at) "
            "SELECT :event_id, id, 'pending', 0, :at, :at FROM webhook_endpoints "
            "WHERE hospital_id = :hospital_id AND :event_type = ANY(event_types)"
        ),
        {
            "event_id": event.id,
            "at": event.created_at,
            "hospital_id": event.hospital_id,
            "event_type": event.type,
        },
    )
    count: int = getattr(result, "rowcount", 0) or 0
    if count:
        await notify_dispatchers(session=session)
    return count
