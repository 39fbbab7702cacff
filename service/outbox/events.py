"""Writing outbox events and fanning them out to webhook deliveries.

Callers pass the session of the change, so the change, its event and its deliveries commit together.
``emit`` writes one event (and, if asked, the same change as the booker institution is told it);
``emit_to_institution`` writes one for a primary institution alone; ``emit_many`` writes any
number of one type in one statement, and
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
from service.models.events import (
    EVENT_TYPES,
    EVENT_VERSIONS,
    INSTITUTION_EVENT_TYPES,
    INSTITUTION_EVENT_VERSIONS,
    EventType,
    InstitutionEventType,
)

CHANNEL = "slotpool_events"


def envelope(
    event_type: str, data: dict[str, Any], *, at: datetime, for_institution: bool = False
) -> dict[str, Any]:
    """The Standard Webhooks body: type, the type's schema version, timestamp, and data (last).

    The version is the hospital's (``EVENT_VERSIONS``) or, for a primary institution's event,
    the institution's (``INSTITUTION_EVENT_VERSIONS``): each recipient has its own schemas.
    """
    versions = INSTITUTION_EVENT_VERSIONS if for_institution else EVENT_VERSIONS
    return {"type": event_type, "version": versions[event_type], "timestamp": instant(at), "data": data}


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
    institution_id: int | None = None,
    institution_data: dict[str, Any] | None = None,
) -> EmittedEvent:
    """Write one event row for a hospital, and its webhook deliveries, in the caller's transaction.

    ``emit_many`` of one event: one statement, the wake-up included. With ``institution_id``
    and ``institution_data`` the same statement also writes the change as the primary
    institution ``institution_id`` is told it (its own row, payload and deliveries): a booker
    told of its referral costs no round trip more. Returns the hospital's event.
    """
    if (institution_id is None) != (institution_data is None):
        raise ValueError("an institution's event needs both its recipient and its data")
    institution = (
        (institution_id, json.dumps(institution_data))
        if institution_id is not None and institution_data is not None
        else None
    )
    emitted = await emit_selected(
        session=session,
        event_type=event_type,
        rows=_given([(hospital_id, json.dumps(data), institution)], institution=institution is not None),
        at=at,
    )
    first = emitted.rows[0]
    return EmittedEvent(id=first.emit_first_event_id, webhook_id=first.emit_first_webhook_id)


async def emit_to_institution(
    *,
    session: AsyncSession,
    institution_id: int,
    hospital_id: int,
    event_type: InstitutionEventType,
    data: dict[str, Any],
    at: datetime,
) -> EmittedEvent:
    """Write one event for a primary institution alone, and its deliveries, in the caller's
    transaction: one statement, the wake-up included.

    ``hospital_id`` is the hospital the event is about (events are kept by hospital,
    docs/performance.md); the institution's endpoints subscribed to ``event_type`` receive it.
    ``event_type`` must be in ``INSTITUTION_EVENT_TYPES`` with its version in
    ``INSTITUTION_EVENT_VERSIONS`` and its schema in contracts/events/institution/; ``data``
    must match that schema and carry no ID number (docs/webhooks.md, "Events for primary
    institutions"). This is the one entry point for a feature telling an institution something.
    """
    emitted = await emit_selected(
        session=session,
        event_type=event_type,
        rows=_given([(hospital_id, None, (institution_id, json.dumps(data)))], institution=True),
        at=at,
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
    # The relation also has ``institution_id`` and ``institution_data``: the same change as a
    # primary institution is told it, a second event of its own (NULL: none for that row). A
    # NULL ``data`` then means no event for the hospital.
    institution: bool = False


@dataclass(frozen=True)
class Emitted:
    rows: Sequence[Row[Any]]
    deliveries: int


async def emit_selected(
    *, session: AsyncSession, event_type: EventType | InstitutionEventType, rows: EventRows, at: datetime
) -> Emitted:
    """Write an event of one type per row of ``rows``, and their deliveries, in one statement.

    The rows ``emit`` writes for each: ``envelope()``'s body around the data (parsed once,
    here), for the hospital and, with ``rows.institution``, for the booker institution in a row
    of its own; then one pending delivery per endpoint of each event's recipient subscribed to
    the type (disabled endpoints too: their queue waits until they are re-enabled, so a hospital
    whose receiver answered 410 misses nothing; endpoints registered later never see older
    events); and, in the same statement, one NOTIFY for them all when anything was queued. The change, the building of the
    data and its events are one statement, so data the database builds never leaves it (the
    release, R6, returns thousands of sessions per batch). The caller answers for the data's
    shape, as with ``emit``; its parameters must not start with ``emit_``.
    """
    for_hospital = event_type in EVENT_TYPES
    if not for_hospital and not (rows.institution and event_type in INSTITUTION_EVENT_TYPES):
        raise ValueError(f"unknown event type {event_type}")
    if rows.institution and event_type not in INSTITUTION_EVENT_TYPES:
        raise ValueError(f"{event_type} is not an event for primary institutions")
    assert not any(name.startswith("emit_") for name in rows.params)
    # Each recipient's rows: (the hospital it is about, the recipient, the head of its
    # envelope, its data), in the events' order, the hospital's before the institution's.
    parts = []
    heads: dict[str, str] = {}
    if for_hospital:
        heads["emit_head"] = _head(event_type, at=at, for_institution=False)
        parts.append(
            f"SELECT r.hospital_id, r.hospital_id AS recipient_id, CAST(:emit_head AS text) AS head,"
            f" r.data::text AS data, r.position, 0 AS audience FROM {rows.relation} AS r"
            " WHERE r.data IS NOT NULL"
        )
    if rows.institution:
        heads["emit_institution_head"] = _head(event_type, at=at, for_institution=True)
        parts.append(
            "SELECT r.hospital_id, r.institution_id AS recipient_id,"
            " CAST(:emit_institution_head AS text) AS head, r.institution_data::text AS data,"
            f" r.position, 1 AS audience FROM {rows.relation} AS r"
            " WHERE r.institution_id IS NOT NULL"
        )
    returned = "".join(f"r.{column}, " for column in rows.returning)
    statement = text(
        f"""
        WITH {rows.ctes},
        emit_recipients AS ({" UNION ALL ".join(parts)}),
        emit_written AS (
            INSERT INTO events (hospital_id, recipient_id, type, payload, created_at)
            SELECT e.hospital_id, e.recipient_id, :emit_type, (e.head || e.data || '}}')::jsonb, :emit_at
            FROM emit_recipients AS e
            ORDER BY e.position, e.audience
            RETURNING id, recipient_id, public_id
        ),
        emit_queued AS (
            INSERT INTO webhook_deliveries (event_id, endpoint_id, status, attempts, next_attempt_at, created_at)
            SELECT emit_written.id, endpoint.id, 'pending', 0, :emit_at, :emit_at
            FROM emit_written
            JOIN webhook_endpoints AS endpoint
              ON endpoint.organisation_id = emit_written.recipient_id
             AND :emit_type = ANY(endpoint.event_types)
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
        **heads,
        "emit_type": event_type,
        "emit_at": at,
        "emit_channel": CHANNEL,
    }
    result = (await session.execute(statement, params)).all()
    deliveries: int = result[0].emit_deliveries if result else 0
    return Emitted(result, deliveries)


def _head(event_type: str, *, at: datetime, for_institution: bool) -> str:
    """The envelope's text before its data, which the statement appends with the closing brace."""
    body = json.dumps(envelope(event_type, {}, at=at, for_institution=for_institution))
    head = body.removesuffix("{}}")
    assert head != body, "the envelope ends with its data"
    return head


# Events whose data Python holds: the rows of two arrays (four with an institution's event), in
# the order given.
_GIVEN = "emit_given"
_GIVEN_CTE = (
    f"{_GIVEN} AS (SELECT g.hospital_id, g.data, g.position "
    "FROM unnest(CAST(:hospital_ids AS bigint[]), CAST(:data AS text[])) WITH ORDINALITY "
    "AS g (hospital_id, data, position))"
)
_GIVEN_WITH_INSTITUTION_CTE = (
    f"{_GIVEN} AS (SELECT g.hospital_id, g.data, g.institution_id, g.institution_data, g.position "
    "FROM unnest(CAST(:hospital_ids AS bigint[]), CAST(:data AS text[]), "
    "CAST(:institution_ids AS bigint[]), CAST(:institution_data AS text[])) WITH ORDINALITY "
    "AS g (hospital_id, data, institution_id, institution_data, position))"
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
    given = _given([(hospital_id, data, None) for hospital_id, data in events], institution=False)
    return (await emit_selected(session=session, event_type=event_type, rows=given, at=at)).deliveries


def _given(
    events: Sequence[tuple[int, str | None, tuple[int, str] | None]], *, institution: bool
) -> EventRows:
    """``(hospital_id, the hospital's data or None, (institution_id, its data) or None)`` each."""
    params: dict[str, Any] = {"hospital_ids": [h for h, _, _ in events], "data": [d for _, d, _ in events]}
    if not institution:
        return EventRows(ctes=_GIVEN_CTE, relation=_GIVEN, params=params)
    params["institution_ids"] = [i[0] if i else None for _, _, i in events]
    params["institution_data"] = [i[1] if i else None for _, _, i in events]
    return EventRows(ctes=_GIVEN_WITH_INSTITUTION_CTE, relation=_GIVEN, params=params, institution=True)


async def notify_dispatchers(*, session: AsyncSession) -> None:
    """Wake the dispatchers when this transaction commits (PostgreSQL delivers NOTIFY at commit)."""
    await session.execute(text(f"NOTIFY {CHANNEL}"))
