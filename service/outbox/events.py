"""Writing outbox events and fanning them out to webhook deliveries.

Callers pass the session of the change, so the change, its event and its deliveries commit together.
"""

from __future__ import annotations

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
