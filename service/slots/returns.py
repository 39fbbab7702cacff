"""A slot going back: to the pool after a cancellation, or to the public (R6), with its event.

``slots.returned`` is sent both when a cancellation comes too late for the pool and when the
release loop returns the slots nobody booked in time. A cancellation builds its event here
in Python (``emit_slots_returned``); the release loop has the database build the same JSON
for thousands of slots at once (``returned_event_data_sql``), and a test holds the two equal.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.clock import instant
from service.models.registry import Department
from service.models.slots import ClinicSession, Slot
from service.outbox.events import emit


def ward_data(cs: ClinicSession) -> dict[str, str] | None:
    """A bed session's ward, or None: both its code and its name, or nothing (R18)."""
    if cs.ward_code is None or cs.ward_name is None:
        return None
    return {"code": cs.ward_code, "name": cs.ward_name}


def session_event_data(cs: ClinicSession) -> dict[str, Any]:
    """The session as events describe it: which day, and which resource (R18)."""
    return {
        "external_id": cs.external_id,
        "service_date": cs.service_date.isoformat(),
        "period": cs.period,
        "resource_kind": cs.resource_kind,
        "modality": cs.modality,
        "ward": ward_data(cs),
    }


async def release_slot(session: AsyncSession, slot: Slot, now: datetime) -> str:
    """After a cancellation the slot returns to the pool while its window is open, else to the public."""
    if now < slot.public_at:
        slot.status = "reserved"
        return "pool"
    slot.status = "returned"
    slot.returned_at = now
    await emit_slots_returned(session=session, slots=[slot], at=now)
    return "public"


async def withdraw_slots(session: AsyncSession, clinic_session: ClinicSession) -> None:
    """停诊 or removal: every slot of the session leaves the pool and the public alike."""
    slots = await session.scalars(select(Slot).where(Slot.session_id == clinic_session.id).with_for_update())
    for slot in slots:
        slot.status = "withdrawn"
    await session.flush()


async def emit_slots_returned(*, session: AsyncSession, slots: list[Slot], at: datetime) -> None:
    """One slots.returned event per clinic session, listing its slots now open to the public."""
    by_session: dict[int, list[Slot]] = {}
    for slot in slots:
        by_session.setdefault(slot.session_id, []).append(slot)
    for session_id, group in by_session.items():
        cs = await session.get(ClinicSession, session_id)
        assert cs is not None
        dept = await session.get(Department, cs.department_id)
        assert dept is not None
        await emit(
            session=session,
            hospital_id=cs.hospital_id,
            event_type="slots.returned",
            data=returned_event_data(cs, dept, group),
            at=at,
        )


def returned_event_data(cs: ClinicSession, dept: Department, slots: list[Slot]) -> dict[str, Any]:
    """The data of one session's slots.returned event: the session, its department, the slots by number."""
    return {
        "session": session_event_data(cs),
        "department": {"code": dept.code, "name": dept.name},
        "public_at": instant(min(s.public_at for s in slots)),
        "slots": [
            {
                "number": s.number,
                "external_id": s.external_id,
                "starts_at": instant(s.starts_at),
                "ends_at": instant(s.ends_at),
            }
            for s in sorted(slots, key=lambda s: s.number)
        ],
    }


def _instant_sql(column: str) -> str:
    """``instant()`` in SQL, as text: RFC 3339 in UTC with ``Z``, and six digits of fraction only
    when the value has a fraction of a second (PostgreSQL's own JSON would write ``+00:00`` and
    drop the fraction's trailing zeros)."""
    whole = f"date_bin('1 second', {column}, timestamptz 'epoch') = {column}"
    return (
        f"to_char({column} AT TIME ZONE 'UTC', CASE WHEN {whole} "
        """THEN 'YYYY-MM-DD"T"HH24:MI:SS"Z"' ELSE 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"' END)"""
    )


# Run first in a transaction that uses ``returned_event_data_sql``. Its instants are text that
# ``_instant_sql`` writes in UTC whatever the session's time zone; UTC is set all the same, so
# no timestamptz ever reaches the JSON in another offset. The big payloads are compressed with
# lz4 where the server has it: a fraction of pglz's time.
RELEASE_SETTINGS_SQL = """
    SELECT set_config('TimeZone', 'UTC', true),
           set_config('default_toast_compression',
                      CASE WHEN 'lz4' = ANY(enumvals) THEN 'lz4' ELSE setting END, true)
    FROM pg_settings WHERE name = 'default_toast_compression'
"""


def returned_slot_sql(slot: str) -> str:
    """One entry of ``data.slots`` for the slot row ``slot``: what ``emit_slots_returned`` lists."""
    return (
        f"json_build_object('number', {slot}.number, 'external_id', {slot}.external_id, "
        f"'starts_at', {_instant_sql(f'{slot}.starts_at')}, 'ends_at', {_instant_sql(f'{slot}.ends_at')})"
    )


def returned_event_data_sql(*, cs: str, dept: str, public_at: str, slots: str) -> str:
    """A ``slots.returned`` event's ``data`` as JSON: ``session_event_data`` of the session row
    ``cs``, the department row ``dept``, the instant ``public_at`` and ``slots``, a JSON array
    of ``returned_slot_sql`` entries by number."""
    return f"""json_build_object(
        'session', json_build_object(
            'external_id', {cs}.external_id,
            'service_date', to_char({cs}.service_date, 'YYYY-MM-DD'),
            'period', {cs}.period,
            'resource_kind', {cs}.resource_kind,
            'modality', {cs}.modality,
            'ward', CASE WHEN {cs}.ward_code IS NOT NULL AND {cs}.ward_name IS NOT NULL
                         THEN json_build_object('code', {cs}.ward_code, 'name', {cs}.ward_name) END),
        'department', json_build_object('code', {dept}.code, 'name', {dept}.name),
        'public_at', {_instant_sql(public_at)},
        'slots', {slots})"""
