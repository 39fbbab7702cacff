"""Writing outbox events. Callers pass the session of the change, so both commit together."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service.models.events import EVENT_TYPES, Event, EventType
from service.webhooks.service import fan_out


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
