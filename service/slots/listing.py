"""A hospital reads its own sessions and slots with their pool state (R1–R5, R19)."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.cursors import encode_cursor
from service.models.registry import Department, Doctor
from service.models.slots import ClinicSession, Slot
from service.slots.schemas import SessionState, SessionStateList, SlotState

# A page holds at most this many sessions: each has at most 500 slots (MAX_SESSION_SLOTS).
MAX_SESSIONS_PAGE = 50
IN_POOL = ("reserved", "offered", "booked")


async def list_hospital_sessions(
    *,
    session: AsyncSession,
    hospital_id: int,
    service_date: date,
    department_code: str | None,
    after: int | None,
    limit: int,
) -> SessionStateList:
    """The hospital's sessions of one day (removed ones left out) by id, each with its slots by number.

    Two statements whatever the page's size: the sessions, then their slots.
    """
    stmt = (
        select(ClinicSession, Department.code, Department.name, Doctor.code)
        .join(Department, Department.id == ClinicSession.department_id)
        .outerjoin(Doctor, Doctor.id == ClinicSession.doctor_id)
        .where(
            ClinicSession.hospital_id == hospital_id,
            ClinicSession.service_date == service_date,
            ClinicSession.status != "removed",
        )
        .order_by(ClinicSession.id)
        .limit(limit + 1)
    )
    if department_code is not None:
        stmt = stmt.where(Department.code == department_code)
    if after is not None:
        stmt = stmt.where(ClinicSession.id > after)
    rows = (await session.execute(stmt)).all()
    page = rows[:limit]
    slots: dict[int, list[SlotState]] = {}
    windows: dict[int, tuple[datetime, datetime]] = {}
    if page:
        found = await session.execute(
            select(
                Slot.session_id,
                Slot.id,
                Slot.number,
                Slot.external_id,
                Slot.starts_at,
                Slot.ends_at,
                Slot.status,
                Slot.pool_opens_at,
                Slot.public_at,
            )
            .where(Slot.session_id.in_([cs.id for cs, *_ in page]), Slot.status != "withdrawn")
            .order_by(Slot.session_id, Slot.number)
        )
        for session_id, slot_id, number, external_id, starts_at, ends_at, status, opens, public in found:
            slots.setdefault(session_id, []).append(
                SlotState(
                    slot_id=slot_id,
                    number=number,
                    external_id=external_id,
                    starts_at=starts_at,
                    ends_at=ends_at,
                    # A slot held for a waiting-list offer is the pool's and not yet booked: to the
                    # hospital it is reserved (docs/waitlist.md).
                    status="reserved" if status == "offered" else status,
                    in_pool=status in IN_POOL,
                )
            )
            windows.setdefault(session_id, (opens, public))
    items = []
    for cs, code, name, doctor_code in page:
        own = slots.get(cs.id, [])
        window = windows.get(cs.id)
        items.append(
            SessionState(
                session_id=cs.id,
                external_id=cs.external_id,
                version=cs.version,
                status=cs.status,
                department_code=code,
                department_name=name,
                resource_kind=cs.resource_kind,
                modality=cs.modality,
                ward_code=cs.ward_code,
                doctor_code=doctor_code,
                doctor_title=cs.doctor_title,
                service_date=cs.service_date,
                period=cs.period,
                pool_opens_at=window[0] if window else None,
                public_at=window[1] if window else None,
                pool_slot_numbers=[s.number for s in own if s.in_pool],
                slots=own,
            )
        )
    next_cursor = encode_cursor(page[-1][0].id) if len(rows) > limit else None
    return SessionStateList(items=items, next_cursor=next_cursor)
