"""Searching the slots a primary institution may book right now, in its scope only (R5–R7, R18)."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.clock import local_date
from service.kit.context import Caller
from service.models.policy import Policy
from service.models.registry import Department, Doctor, Organisation
from service.models.slots import ClinicSession, Slot
from service.policy.scope import admitted, alliance_leads, policies_in_force, pools_in_scope
from service.policy.service import no_policy
from service.referrals.schemas import BookableSlot, NamedRef
from service.referrals.views import doctor_out, ward_out


async def search_bookable_slots(
    *,
    session: AsyncSession,
    caller: Caller,
    now: datetime,
    hospital_id: int | None,
    department_id: int | None,
    service_date: date | None,
    title: str | None,
    resource_kind: str | None,
    modality: str | None,
    after_id: int | None,
    limit: int,
) -> tuple[list[BookableSlot], int | None]:
    """Reserved slots open to the caller right now, in its scope only.

    A page may hold fewer than ``limit`` items when some slots fall under a policy
    version that does not admit the caller; ``next_cursor`` still pages on.
    """
    booker = await session.get(Organisation, caller.org_id)
    assert booker is not None
    allowed = await pools_in_scope(session=session, booker=booker, on=local_date(now))
    pools = [
        (h, kind)
        for h, kind in allowed
        if (hospital_id is None or h == hospital_id) and (resource_kind is None or kind == resource_kind)
    ]
    if not pools:
        return [], None
    stmt = (
        select(Slot, ClinicSession, Department, Doctor, Organisation)
        .join(ClinicSession, ClinicSession.id == Slot.session_id)
        .join(Department, Department.id == ClinicSession.department_id)
        .outerjoin(Doctor, Doctor.id == ClinicSession.doctor_id)  # examinations and beds may have none
        .join(Organisation, Organisation.id == Slot.hospital_id)
        .where(
            tuple_(Slot.hospital_id, Slot.resource_kind).in_(pools),
            Slot.status == "reserved",
            Slot.pool_opens_at <= now,
            Slot.public_at > now,
            Slot.starts_at > now,
        )
        .order_by(Slot.id)
        .limit(limit + 1)
    )
    if department_id is not None:
        stmt = stmt.where(ClinicSession.department_id == department_id)
    if service_date is not None:
        stmt = stmt.where(ClinicSession.service_date == service_date)
    if title is not None:
        stmt = stmt.where(ClinicSession.doctor_title == title)
    if modality is not None:
        stmt = stmt.where(ClinicSession.modality == modality)
    if after_id is not None:
        stmt = stmt.where(Slot.id > after_id)
    rows = (await session.execute(stmt)).all()
    next_cursor = rows[limit - 1][0].id if len(rows) > limit else None
    # The pool list used today's policies; each slot answers to its kind's policy on its service date,
    # as booking does.
    # One policy query per service date on the page, whatever the number of hospitals.
    page = rows[:limit]
    leads = await alliance_leads(session, booker.id)
    in_force: dict[date, dict[tuple[int, str], Policy]] = {}
    for day in sorted({row[1].service_date for row in page}):
        in_force[day] = await policies_in_force(
            session=session, on=day, hospital_ids={row[4].id for row in page}
        )
    bookable = []
    for row in page:
        cs, hosp = row[1], row[4]
        policy = in_force[cs.service_date].get((hosp.id, cs.resource_kind))
        if policy is None:
            raise no_policy(hosp.id, cs.resource_kind, cs.service_date)
        if admitted(policy, hosp, booker, leads):
            bookable.append(row)
    items = [
        BookableSlot(
            slot_id=slot.id,
            number=slot.number,
            starts_at=slot.starts_at,
            ends_at=slot.ends_at,
            service_date=cs.service_date,
            period=cs.period,
            hospital=NamedRef(id=hosp.id, code=hosp.code, name=hosp.name),
            department=NamedRef(id=dept.id, code=dept.code, name=dept.name),
            resource_kind=cs.resource_kind,
            modality=cs.modality,
            ward=ward_out(cs),
            doctor=doctor_out(doc),
            pool_opens_at=slot.pool_opens_at,
            public_at=slot.public_at,
        )
        for slot, cs, dept, doc, hosp in bookable
    ]
    return items, next_cursor
