"""What each caller may read through /fhir, and the searches behind it.

Scope (OWASP API1, as everywhere in the pool): a hospital reads its own Locations,
Schedules and Slots; a primary institution reads the hospitals whose pool it may book today
(the same scope as ``GET /v1/pool/slots``); a platform or the commission reads every hospital
in its region. Appointments are referrals: only the receiving hospital and the referring
institution see them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, DateTime, Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.clock import local_date
from service.context import Actor, Caller
from service.crypto import Crypto
from service.fhir import resources
from service.fhir.search import DateBound
from service.referrals.models import Referral
from service.referrals.service import pools_in_scope, referral_out
from service.regions import city_of, covers, province_of
from service.registry.models import Department, Doctor, Organisation, Region
from service.slots.models import ClinicSession, Slot


async def visible_hospital_ids(*, session: AsyncSession, caller: Caller, now: datetime) -> list[int]:
    """The hospitals whose Locations, Schedules and Slots ``caller`` may read."""
    if caller.role == "hospital":
        return [caller.org_id]
    if caller.role == "primary":
        booker = await session.get(Organisation, caller.org_id)
        assert booker is not None
        pools = await pools_in_scope(session=session, booker=booker, on=local_date(now))
        return sorted({hospital_id for hospital_id, _kind in pools})
    rows = await session.execute(
        select(Organisation.id, Organisation.region_code).where(Organisation.kind == "hospital")
    )
    return [org_id for org_id, region in rows if covers(caller.region_code, region)]


async def _page(
    session: AsyncSession, stmt: Select[*tuple[Any, ...]], id_column: Any, after: int | None, count: int
) -> tuple[list[Any], int | None]:
    """One keyset page ordered by id, and the id to continue after when there is more."""
    if after is not None:
        stmt = stmt.where(id_column > after)
    rows = list((await session.execute(stmt.order_by(id_column).limit(count + 1))).all())
    more = len(rows) > count
    rows = rows[:count]
    return rows, (rows[-1][0].id if more else None)


async def region_names(session: AsyncSession, hospitals: Sequence[Organisation]) -> dict[str, str]:
    codes = {
        c for h in hospitals for c in (province_of(h.region_code), city_of(h.region_code), h.region_code)
    }
    rows = await session.execute(select(Region.code, Region.name).where(Region.code.in_(codes)))
    return dict(rows.all())


async def search_locations(
    *, session: AsyncSession, hospital_ids: list[int], location_id: int | None, after: int | None, count: int
) -> tuple[list[dict[str, Any]], int | None]:
    stmt = select(Organisation).where(Organisation.id.in_(hospital_ids))
    if location_id is not None:
        stmt = stmt.where(Organisation.id == location_id)
    rows, next_after = await _page(session, stmt, Organisation.id, after, count)
    hospitals = [row[0] for row in rows]
    names = await region_names(session, hospitals)
    return [resources.location(h, names) for h in hospitals], next_after


def _session_day() -> tuple[ColumnElement[datetime], ColumnElement[datetime]]:
    """SQL: the Beijing-time day of a session, as the [start, end) of its Schedule.planningHorizon."""
    start = func.timezone(
        "Asia/Shanghai", ClinicSession.service_date.cast(DateTime()), type_=DateTime(timezone=True)
    )
    return start, start + timedelta(days=1)


async def search_schedules(
    *,
    session: AsyncSession,
    hospital_ids: list[int],
    schedule_id: int | None,
    location_id: int | None,
    active: bool | None,
    dates: list[DateBound],
    after: int | None,
    count: int,
) -> tuple[list[dict[str, Any]], int | None]:
    stmt = (
        select(ClinicSession, Department, Doctor)
        .join(Department, Department.id == ClinicSession.department_id)
        .join(Doctor, Doctor.id == ClinicSession.doctor_id)
        .where(ClinicSession.hospital_id.in_(hospital_ids))
    )
    if schedule_id is not None:
        stmt = stmt.where(ClinicSession.id == schedule_id)
    if location_id is not None:
        stmt = stmt.where(ClinicSession.hospital_id == location_id)
    if active is not None:
        stmt = stmt.where((ClinicSession.status == "active") == active)
    day_start, day_end = _session_day()
    for bound in dates:
        stmt = stmt.where(bound.overlaps(day_start, day_end))
    rows, next_after = await _page(session, stmt, ClinicSession.id, after, count)
    return [resources.schedule(cs, dept, doc) for cs, dept, doc in rows], next_after


async def search_slots(
    *,
    session: AsyncSession,
    hospital_ids: list[int],
    now: datetime,
    slot_id: int | None,
    schedule_id: int | None,
    starts: list[DateBound],
    statuses: list[str] | None,
    after: int | None,
    count: int,
) -> tuple[list[dict[str, Any]], int | None]:
    status = resources.slot_status(now)
    stmt = select(Slot, status).where(Slot.hospital_id.in_(hospital_ids))
    if slot_id is not None:
        stmt = stmt.where(Slot.id == slot_id)
    if schedule_id is not None:
        stmt = stmt.where(Slot.session_id == schedule_id)
    for bound in starts:
        stmt = stmt.where(bound.clause(Slot.starts_at))
    if statuses is not None:
        stmt = stmt.where(status.in_(statuses))
    rows, next_after = await _page(session, stmt, Slot.id, after, count)
    return [resources.slot(row, fhir_status) for row, fhir_status in rows], next_after


async def search_appointments(
    *,
    session: AsyncSession,
    actor: Actor,
    caller: Caller,
    crypto: Crypto,
    reference: str | None,
    statuses: list[str] | None,
    dates: list[DateBound],
    slot_id: int | None,
    after: int | None,
    count: int,
) -> tuple[list[dict[str, Any]], int | None]:
    """Referrals as Appointments, each read recorded in the audit trail (R15)."""
    stmt = select(Referral).join(Slot, Slot.id == Referral.slot_id)
    if caller.role == "hospital":
        stmt = stmt.where(Referral.hospital_id == caller.org_id)
    else:
        stmt = stmt.where(Referral.booker_org_id == caller.org_id)
    if reference is not None:
        stmt = stmt.where(Referral.reference == reference)
    if statuses is not None:
        stmt = stmt.where(Referral.status.in_(statuses))
    if slot_id is not None:
        stmt = stmt.where(Referral.slot_id == slot_id)
    for bound in dates:
        stmt = stmt.where(bound.clause(Slot.starts_at))
    rows, next_after = await _page(session, stmt, Referral.id, after, count)
    appointments = []
    for (referral,) in rows:
        out = await referral_out(session=session, crypto=crypto, referral=referral, show_code=False)
        appointments.append(resources.appointment(out, hospital_id=referral.hospital_id))
        await record(
            session=session,
            actor=actor,
            action="referral.read",
            hospital_id=referral.hospital_id,
            resident_id=referral.resident_id,
            referral_id=referral.id,
            detail={"via": "fhir"},
        )
    return appointments, next_after
