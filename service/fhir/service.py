"""What each caller may read through /fhir, and the searches behind it.

Scope (OWASP API1, as everywhere in the pool) is a set of pools, one per (hospital, resource
kind): a hospital reads every kind of its own; a primary institution reads the pools it may
book today, each kind under its own policy (the same scope as ``GET /v1/pool/slots``, R18), so
a hospital's CT pool may be visible to it while the hospital's clinics are not; a platform or
the commission reads every kind of every hospital in its region. A Location is visible with any
of its pools. Appointments are referrals: only the receiving hospital and the referring
institution see them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, DateTime, Select, and_, false, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.fhir import resources
from service.fhir.search import DateBound
from service.kit import bounds
from service.kit.clock import local_date
from service.kit.context import Actor, Caller
from service.kit.crypto import Crypto
from service.kit.regions import city_of, covers, province_of
from service.kit.resources import RESOURCE_KINDS
from service.models.referrals import Referral
from service.models.registry import Department, Doctor, Organisation, Region
from service.models.slots import ClinicSession, Slot
from service.policy.scope import pools_in_scope
from service.referrals.views import load_views
from service.registry.service import booking_link, notice_settings_by_region

Pool = tuple[int, str]  # (hospital id, resource kind)
Service = tuple[str, str | None]  # (resource kind, modality)


async def visible_pools(*, session: AsyncSession, caller: Caller, now: datetime) -> list[Pool]:
    """The (hospital, kind) pools whose Schedules and Slots ``caller`` may read."""
    if caller.role == "primary":
        booker = await session.get(Organisation, caller.org_id)
        assert booker is not None
        return await pools_in_scope(session=session, booker=booker, on=local_date(now))
    if caller.role == "hospital":
        hospitals = [caller.org_id]
    else:
        rows = await session.execute(
            select(Organisation.id, Organisation.region_code).where(Organisation.kind == "hospital")
        )
        hospitals = [org_id for org_id, region in rows if covers(caller.region_code, region)]
    return [(hospital_id, kind) for hospital_id in hospitals for kind in RESOURCE_KINDS]


def in_pools(hospital_column: Any, kind_column: Any, pools: list[Pool]) -> ColumnElement[bool]:
    return tuple_(hospital_column, kind_column).in_(pools) if pools else false()


def shown_session() -> ColumnElement[bool]:
    """SQL: a session FHIR shows: not removed, and on a day inside the API's window.

    A row from before the bounds existed (a 9999-12-31 pushed as ``infinity``) stays out of
    every answer rather than breaking it; its hospital or commission can remove it.
    """
    return and_(
        ClinicSession.status != "removed",
        ClinicSession.service_date.between(bounds.EARLIEST, bounds.LATEST),
    )


def offers(services: list[Service]) -> ColumnElement[bool]:
    """SQL: the clinic session offers one of ``services``."""
    return or_(
        *[
            and_(
                ClinicSession.resource_kind == kind,
                ClinicSession.modality.is_(None) if modality is None else ClinicSession.modality == modality,
            )
            for kind, modality in services
        ],
        false(),
    )


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


async def link_templates(session: AsyncSession, hospitals: Iterable[Organisation]) -> dict[int, str]:
    """Each hospital's booking deep-link template: its region's, from the most specific division
    with notice settings (docs/fhir.md); hospitals whose region has none are left out."""
    hospitals = list(hospitals)
    by_region = await notice_settings_by_region(session, {h.region_code for h in hospitals})
    templates = {}
    for hospital in hospitals:
        row = by_region[hospital.region_code]
        if row is not None and row.booking_link_template:
            templates[hospital.id] = row.booking_link_template
    return templates


def slot_link(templates: dict[int, str], row: Slot, hospital: Organisation) -> str | None:
    """The slot's booking deep link, when its hospital's region has a template."""
    template = templates.get(hospital.id)
    if template is None:
        return None
    return booking_link(
        template,
        slot_id=row.id,
        schedule_id=row.session_id,
        location_id=hospital.id,
        hospital_code=hospital.code,
    )


async def search_locations(
    *,
    session: AsyncSession,
    pools: list[Pool],
    location_id: int | None = None,
    after: int | None = None,
    count: int,
) -> tuple[list[dict[str, Any]], int | None]:
    stmt = select(Organisation).where(Organisation.id.in_(sorted({h for h, _ in pools})))
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
    pools: list[Pool],
    schedule_id: int | None = None,
    location_id: int | None = None,
    active: bool | None = None,
    dates: Sequence[DateBound] = (),
    services: list[Service] | None = None,
    after: int | None = None,
    count: int,
) -> tuple[list[dict[str, Any]], int | None]:
    stmt = (
        select(ClinicSession, Department, Doctor)
        .join(Department, Department.id == ClinicSession.department_id)
        .outerjoin(Doctor, Doctor.id == ClinicSession.doctor_id)  # examinations and beds may have none
        .where(in_pools(ClinicSession.hospital_id, ClinicSession.resource_kind, pools), shown_session())
    )
    if services is not None:
        stmt = stmt.where(offers(services))
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
    pools: list[Pool],
    now: datetime,
    slot_id: int | None = None,
    schedule_id: int | None = None,
    starts: Sequence[DateBound] = (),
    statuses: list[str] | None = None,
    services: list[Service] | None = None,
    after: int | None = None,
    count: int,
) -> tuple[list[dict[str, Any]], int | None]:
    status = resources.slot_status(now)
    stmt = (
        select(Slot, ClinicSession, status, Organisation)
        .join(ClinicSession, ClinicSession.id == Slot.session_id)
        .join(Organisation, Organisation.id == Slot.hospital_id)
        .where(in_pools(Slot.hospital_id, Slot.resource_kind, pools), shown_session())
    )
    if services is not None:
        stmt = stmt.where(offers(services))
    if slot_id is not None:
        stmt = stmt.where(Slot.id == slot_id)
    if schedule_id is not None:
        stmt = stmt.where(Slot.session_id == schedule_id)
    for bound in starts:
        stmt = stmt.where(bound.clause(Slot.starts_at))
    if statuses is not None:
        stmt = stmt.where(status.in_(statuses))
    rows, next_after = await _page(session, stmt, Slot.id, after, count)
    free_at = {hospital.id: hospital for *_, fhir_status, hospital in rows if fhir_status == "free"}
    templates = await link_templates(session, free_at.values()) if free_at else {}
    return [
        resources.slot(row, cs, fhir_status, slot_link(templates, row, hospital))
        for row, cs, fhir_status, hospital in rows
    ], next_after


async def search_appointments(
    *,
    session: AsyncSession,
    actor: Actor,
    caller: Caller,
    crypto: Crypto,
    reference: str | None = None,
    statuses: list[str] | None = None,
    dates: Sequence[DateBound] = (),
    slot_id: int | None = None,
    after: int | None = None,
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
    views = await load_views(session, crypto, [referral for (referral,) in rows])
    appointments = [resources.appointment(view) for view in views]
    for (referral,) in rows:
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
