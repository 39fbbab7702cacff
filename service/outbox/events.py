"""Writing outbox events and fanning them out to webhook deliveries.

Callers pass the session of the change, so the change, its event and its deliveries commit together.
``emit`` writes one event; ``emit_many`` writes any number of one type in one statement, and
``emit_selected`` writes one per row of a statement's own CTE, for a change that touches
thousands of rows at once and builds their data in the database (the release, R6).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.clock import instant
from service.models.events import EVENT_TYPES, EVENT_VERSIONS, EventType

CHANNEL = "slotpool_events"


def envelope(event_type: str, data: dict[str, Any], *, at: datetime) -> dict[str, Any]:
    """The Standard Webhooks body: type, the type's schema version, timestamp, and data (last)."""
    return {"type": event_type, "version": EVENT_VERSIONS[event_type], "timestamp": instant(at), "data": data}


@dataclass(frozen=True)
class EmittedEvent:
    """An event just written: its internal id (the outbox's order) and its webhook-id."""

    id: int
    webhook_id: str


async def emit(
    *,
    session: AsyncSession,
    hospital_id: int,
    event_type: EventType,
    data: dict[str, Any],
    at: datetime,
) -> EmittedEvent:
    """Write one event row for a hospital, and its webhook deliveries, in the caller's transaction.

    ``emit_many`` of one event: one statement, the wake-up included.
    """
    emitted = await emit_selected(
        session=session, event_type=event_type, rows=_given([(hospital_id, json.dumps(data))]), at=at
    )
    first = emitted.rows[0]
    return EmittedEvent(id=first.emit_first_event_id, webhook_id=first.emit_first_webhook_id)


@dataclass(frozen=True)
class EventRows:
    """Rows of SQL that become events: ``ctes``, a WITH list (which may change data, as the
    change causing the events does), ends in the CTE ``relation``, one row per event with
    ``hospital_id``, ``data`` (JSON, or JSON text) and ``position`` (the events' order).
    ``returning`` names the columns of ``relation`` to give back, event by event."""

    ctes: str
    relation: str
    params: Mapping[str, Any]
    returning: tuple[str, ...] = ()


@dataclass(frozen=True)
class Emitted:
    rows: Sequence[Row[Any]]
    deliveries: int


async def emit_selected(
    *, session: AsyncSession, event_type: EventType, rows: EventRows, at: datetime
) -> Emitted:
    """Write an event of one type per row of ``rows``, and their deliveries, in one statement.

    The rows ``emit`` writes for each: ``envelope()``'s body around the data (parsed once,
    here), then one pending delivery per endpoint of the event's hospital subscribed to the
    type (disabled endpoints too: their queue waits until they are re-enabled, so a hospital
    whose receiver answered 410 misses nothing; endpoints registered later never see older
    events); and, in the same statement, one NOTIFY for them all when anything was queued. The change, the building of the
    data and its events are one statement, so data the database builds never leaves it (the
    release, R6, returns thousands of sessions per batch). The caller answers for the data's
    shape, as with ``emit``; its parameters must not start with ``emit_``.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type}")
    body = json.dumps(envelope(event_type, {}, at=at))
    head = body.removesuffix("{}}")
    assert head != body, "the envelope ends with its data"
    assert not any(name.startswith("emit_") for name in rows.params)
    returned = "".join(f"r.{column}, " for column in rows.returning)
    statement = text(
        f"""
        WITH {rows.ctes},
        emit_written AS (
            INSERT INTO events (hospital_id, type, payload, created_at)
            SELECT r.hospital_id, :emit_type, (:emit_head || r.data::text || '}}')::jsonb, :emit_at
            FROM {rows.relation} AS r
            ORDER BY r.position
            RETURNING id, hospital_id, public_id
        ),
        emit_queued AS (
            INSERT INTO webhook_deliveries (event_id, endpoint_id, status, attempts, next_attempt_at, created_at)
            SELECT emit_written.id, endpoint.id, 'pending', 0, :emit_at, :emit_at
            FROM emit_written
            JOIN webhook_endpoints AS endpoint
              ON endpoint.hospital_id = emit_written.hospital_id AND :emit_type = ANY(endpoint.event_types)
            RETURNING 1
        )
        SELECT {returned}(SELECT count(*) FROM emit_queued) AS emit_deliveries,
               (SELECT min(id) FROM emit_written) AS emit_first_event_id,
               (SELECT public_id FROM emit_written ORDER BY id LIMIT 1) AS emit_first_webhook_id,
               (SELECT CASE WHEN count(*) > 0 THEN pg_notify(:emit_channel, '') END FROM emit_queued)
                   AS emit_woken
        FROM {rows.relation} AS r
        ORDER BY r.position
        """
    )
    params = {
        **rows.params,
        "emit_type": event_type,
        "emit_head": head,
        "emit_at": at,
        "emit_channel": CHANNEL,
    }
    result = (await session.execute(statement, params)).all()
    deliveries: int = result[0].emit_deliveries if result else 0
    return Emitted(result, deliveries)


# Events whose data Python holds: the rows of two arrays, in the order given.
_GIVEN = "emit_given"
_GIVEN_CTE = (
    f"{_GIVEN} AS (SELECT g.hospital_id, g.data, g.position "
    "FROM unnest(CAST(:hospital_ids AS bigint[]), CAST(:data AS text[])) WITH ORDINALITY "
    "AS g (hospital_id, data, position))"
)


async def emit_many(
    *,
    session: AsyncSession,
    event_type: EventType,
    events: Sequence[tuple[int, str]],
    at: datetime,
) -> int:
    """Write events of one type, ``(hospital_id, data as JSON text)`` each, and their deliveries.

    ``emit`` for each, in one statement whatever their number, and one NOTIFY for them all.
    Returns the deliveries queued.
    """
    if not events:
        return 0
    return (
        await emit_selected(session=session, event_type=event_type, rows=_given(events), at=at)
    ).deliveries


def _given(events: Sequence[tuple[int, str]]) -> EventRows:
    return EventRows(
        ctes=_GIVEN_CTE,
        relation=_GIVEN,
        params={"hospital_ids": [h for h, _ in events], "data": [d for _, d in events]},
    )


async def notify_dispatchers(*, session: AsyncSession) -> None:
    """Wake the dispatchers when this transaction commits (PostgreSQL delivers NOTIFY at commit)."""
    await session.execute(text(f"NOTIFY {CHANNEL}"))
