"""A slot going back: to the pool after a cancellation, or to the public (R6), with its event.

``slots.returned`` is sent both when a cancellation comes too late for the pool and when the
release loop returns the slots nobody booked in time.
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
            data={
                "session": session_event_data(cs),
                "department": {"code": dept.code, "name": dept.name},
                "public_at": instant(group[0].public_at),
                "slots": [
                    {
                        "number": s.number,
                        "external_id": s.external_id,
                        "starts_at": instant(s.starts_at),
                        "ends_at": instant(s.ends_at),
                    }
                    for s in sorted(group, key=lambda s: s.number)
                ],
            },
            at=at,
        )
