"""Hospitals push clinic sessions; the pool applies the policy to each push (R1–R5, R16)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit import bounds
from service.kit.bounds import service_date_window
from service.kit.clock import local_date
from service.kit.context import Actor
from service.kit.crypto import Crypto
from service.kit.db import advisory_key
from service.kit.errors import Problem
from service.kit.resources import MAX_BED_WINDOW_MINUTES, MAX_SLOT_MINUTES
from service.models.policy import Policy
from service.models.registry import SENIOR_TITLES, Department, Doctor, Organisation
from service.models.slots import ClinicSession, ReservationShortfall, Slot
from service.policy.service import policy_in_force
from service.slots.reservation import Candidate, Selection, check_marked, select_reserved
from service.slots.schemas import (
    ItemError,
    PushResult,
    SessionIn,
    SessionResult,
    ShortfallOut,
)
from service.slots.shortfalls import record_shortfalls
from service.slots.withdrawal import withdraw_session

POOL_HELD = ("reserved", "booked", "returned")
# What each resource kind must name; a doctor stays optional for the other two (R18).
REQUIRED_DETAIL = {"outpatient": "doctor", "examination": "modality", "bed": "ward"}


class ItemRejected(Exception):
    def __init__(self, errors: list[ItemError]) -> None:
        super().__init__(errors[0].detail)
        self.errors = errors


def _kind_errors(item: SessionIn) -> list[ItemError]:
    """R18: a session names what its kind needs (a doctor, a modality or a ward), and no other kind's detail."""
    present = {
        "doctor": item.doctor is not None,
        "modality": item.modality is not None,
        "ward": item.ward is not None,
    }
    needs = REQUIRED_DETAIL[item.resource_kind]
    errors: list[ItemError] = []
    if not present[needs]:
        errors.append(
            ItemError(
                code=f"{needs}_required", detail=f"A session of kind {item.resource_kind} names its {needs}."
            )
        )
    for detail in ("modality", "ward"):
        if detail != needs and present[detail]:
            errors.append(
                ItemError(
                    code="detail_not_for_kind",
                    detail=f"A session of kind {item.resource_kind} has no {detail}.",
                )
            )
    return errors


def validate_session(item: SessionIn, today: date) -> list[ItemError]:
    """Checks a push item must pass before anything is written."""
    errors = _kind_errors(item)
    earliest, latest = service_date_window(today)
    if not earliest <= item.service_date <= latest:
        # A date far off is a HIS error (a year 9999 placeholder), not a plan: refused, never stored.
        errors.append(
            ItemError(
                code=bounds.CODE,
                detail=f"'service_date' must be between {earliest} and {latest} "
                "(a year back to two years ahead).",
            )
        )
    max_minutes = MAX_BED_WINDOW_MINUTES if item.resource_kind == "bed" else MAX_SLOT_MINUTES
    if item.status == "active" and not item.slots:
        errors.append(ItemError(code="no_slots", detail="An active session needs at least one slot."))
    numbers = [s.number for s in item.slots]
    if len(numbers) != len(set(numbers)):
        errors.append(ItemError(code="duplicate_slot_number", detail="Slot numbers must be unique."))
    for s in item.slots:
        if s.ends_at <= s.starts_at:
            errors.append(
                ItemError(
                    code="slot_not_positive",
                    detail="A slot ends after it starts.",
                    slot_number=s.number,
                )
            )
        elif s.ends_at - s.starts_at > timedelta(minutes=max_minutes):
            errors.append(
                ItemError(
                    code="bed_window_too_long" if item.resource_kind == "bed" else "r16_slot_too_long",
                    detail="A bed's admission window lasts at most one day."
                    if item.resource_kind == "bed"
                    else f"A slot lasts at most {MAX_SLOT_MINUTES} minutes (R16).",
                    slot_number=s.number,
                )
            )
        if local_date(s.starts_at) != item.service_date:
            errors.append(
                ItemError(
                    code="slot_outside_service_date",
                    detail="The slot does not start on the session's date (Beijing time).",
                    slot_number=s.number,
                )
            )
        if s.starts_at < item.public_at:
            errors.append(
                ItemError(
                    code="slot_before_public_release",
                    detail="The slot starts before the session's public release.",
                    slot_number=s.number,
                )
            )
    return errors


async def push_sessions(
    *,
    session: AsyncSession,
    actor: Actor,
    crypto: Crypto,
    hospital: Organisation,
    items: list[SessionIn],
) -> list[SessionResult]:
    """Apply each pushed session in its own savepoint; one bad item never spoils another."""
    results: list[SessionResult] = []
    for item in items:
        try:
            async with session.begin_nested():
                results.append(
                    await _apply_session(
                        session=session, actor=actor, crypto=crypto, hospital=hospital, item=item
                    )
                )
        except (ItemRejected, Problem) as exc:
            errors = (
                exc.errors if isinstance(exc, ItemRejected) else [ItemError(code=exc.code, detail=exc.detail)]
            )
            results.append(
                SessionResult(
                    external_id=item.external_id, result="rejected", version=item.version, errors=errors
                )
            )
    return results


async def push_hospital_sessions(
    *, session: AsyncSession, actor: Actor, crypto: Crypto, hospital_id: int, items: list[SessionIn]
) -> PushResult:
    """``push_sessions`` for the hospital ``hospital_id`` (the pushing client's organisation)."""
    hospital = await session.get(Organisation, hospital_id)
    assert hospital is not None
    return PushResult(
        results=await push_sessions(
            session=session, actor=actor, crypto=crypto, hospital=hospital, items=items
        )
    )


async def _upsert_department(session: AsyncSession, hospital_id: int, item: SessionIn) -> Department:
    dept = item.department
    stmt = (
        insert(Department)
        .values(hospital_id=hospital_id, code=dept.code, name=dept.name, specialty=dept.specialty)
        .on_conflict_do_update(
            index_elements=["hospital_id", "code"],
            set_={"name": dept.name, "specialty": dept.specialty},
        )
        .returning(Department)
    )
    return (await session.scalars(stmt, execution_options={"populate_existing": True})).one()


async def _upsert_doctor(session: AsyncSession, hospital_id: int, item: SessionIn) -> Doctor | None:
    doc = item.doctor
    if doc is None:
        return None  # an examination or bed session without a named doctor
    stmt = (
        insert(Doctor)
        .values(organisation_id=hospital_id, code=doc.code, name=doc.name, title=doc.title)
        .on_conflict_do_update(
            index_elements=["organisation_id", "code"], set_={"name": doc.name, "title": doc.title}
        )
        .returning(Doctor)
    )
    return (await session.scalars(stmt, execution_options={"populate_existing": True})).one()


async def lock_department_day(session: AsyncSession, department_id: int, day: date) -> None:
    """Serialise pushes that recompute the same department-day."""
    key = advisory_key("push", "department_day", department_id, day.isoformat())
    await session.execute(select(func.pg_advisory_xact_lock(key)))


async def _apply_session(
    *, session: AsyncSession, actor: Actor, crypto: Crypto, hospital: Organisation, item: SessionIn
) -> SessionResult:
    errors = validate_session(item, local_date(actor.now))
    if errors:
        raise ItemRejected(errors)
    existing = await session.scalar(
        select(ClinicSession)
        .where(
            ClinicSession.hospital_id == hospital.id,
            ClinicSession.external_id == item.external_id,
            ClinicSession.status != "removed",  # a removed session frees its HIS session ID
        )
        .with_for_update()
    )
    if existing is not None and item.version <= existing.version:
        outcome = "unchanged" if item.version == existing.version else "stale"
        return await _result(session, existing, outcome, version=existing.version)

    department = await _upsert_department(session, hospital.id, item)
    doctor = await _upsert_doctor(session, hospital.id, item)
    policy = await policy_in_force(
        session=session, hospital_id=hospital.id, on=item.service_date, kind=item.resource_kind
    )
    await lock_department_day(session, department.id, item.service_date)

    created = existing is None
    if existing is None:
        existing = ClinicSession(
            hospital_id=hospital.id, external_id=item.external_id, resource_kind=item.resource_kind
        )
        session.add(existing)
    elif (existing.department_id, existing.service_date, existing.resource_kind) != (
        department.id,
        item.service_date,
        item.resource_kind,
    ):
        raise ItemRejected(
            [
                ItemError(
                    code="session_moved",
                    detail="A session keeps its department, date and resource kind; "
                    "withdraw it and push a new one.",
                )
            ]
        )
    existing.version = item.version
    existing.department_id = department.id
    existing.modality = item.modality
    existing.ward_code = item.ward.code if item.ward else None
    existing.ward_name = item.ward.name if item.ward else None
    existing.doctor_id = doctor.id if doctor else None
    existing.doctor_title = doctor.title if doctor else None
    existing.service_date = item.service_date
    existing.period = item.period
    existing.status = item.status
    existing.withdrawn_reason = item.withdrawn_reason if item.status == "withdrawn" else None
    existing.location = item.location
    existing.policy_id = policy.id
    existing.updated_at = actor.now
    await session.flush()

    if item.status == "withdrawn":
        await withdraw_session(
            session=session,
            actor=actor,
            crypto=crypto,
            clinic_session=existing,
            reason=item.withdrawn_reason or "The hospital withdrew this session (停诊).",
        )
        await record_shortfalls(session, actor, hospital, department, existing, policy, None)
        return await _result(session, existing, "withdrawn", version=item.version)

    await _upsert_slots(session, hospital, existing, item, policy)
    selection = await _reserve(session, actor, hospital, department, existing, item, policy)
    lead_short = _lead_shortfall(item, policy, actor.now)
    await record_shortfalls(session, actor, hospital, department, existing, policy, selection, lead_short)
    return await _result(session, existing, "created" if created else "updated", version=item.version)


async def _upsert_slots(
    session: AsyncSession,
    hospital: Organisation,
    cs: ClinicSession,
    item: SessionIn,
    policy: Policy,
) -> None:
    current = {
        s.number: s
        for s in await session.scalars(select(Slot).where(Slot.session_id == cs.id).with_for_update())
    }
    incoming = {s.number: s for s in item.slots}
    errors: list[ItemError] = []
    for number, old in current.items():
        new = incoming.get(number)
        if old.status == "booked" and (
            new is None or (new.starts_at, new.ends_at) != (old.starts_at, old.ends_at)
        ):
            errors.append(
                ItemError(
                    code="booked_slot_changed",
                    detail="This slot has a pool referral; it cannot be removed or moved. "
                    "Withdraw the session to cancel its referrals.",
                    slot_number=number,
                )
            )
    if errors:
        raise ItemRejected(errors)

    opens_at = pool_opens_at(item.public_at, policy)
    for number, old in current.items():
        if number not in incoming:
            old.status = "withdrawn"
    for number, new in incoming.items():
        slot = current.get(number)
        if slot is None:
            slot = Slot(
                session_id=cs.id,
                resource_kind=cs.resource_kind,
                hospital_id=hospital.id,
                number=number,
                status="public",
            )
            session.add(slot)
        elif slot.status == "withdrawn":
            slot.status = "public"
        slot.external_id = new.external_id
        slot.starts_at = new.starts_at
        slot.ends_at = new.ends_at
        slot.public_at = item.public_at
        slot.pool_opens_at = opens_at
    await session.flush()


async def _reserve(
    session: AsyncSession,
    actor: Actor,
    hospital: Organisation,
    department: Department,
    cs: ClinicSession,
    item: SessionIn,
    policy: Policy,
) -> Selection | None:
    """Hold slots of this session for the pool, measured over the department-day of its kind.

    An examination block never counts towards a department's outpatient target, nor the
    reverse. R4's senior share needs no special case: only outpatient policies may set one.
    """
    if policy.preferred_specialties and department.specialty not in policy.preferred_specialties:
        return None  # this department is outside the policy's reserving departments
    rows = (
        await session.execute(
            select(Slot, ClinicSession.doctor_title)
            .join(ClinicSession, ClinicSession.id == Slot.session_id)
            .where(
                ClinicSession.department_id == department.id,
                ClinicSession.service_date == item.service_date,
                ClinicSession.resource_kind == cs.resource_kind,
                ClinicSession.status == "active",
                Slot.status != "withdrawn",
            )
        )
    ).all()
    marks = {s.number: s.reserved for s in item.slots}
    by_key = {slot.id: slot for slot, _ in rows}
    if hospital.reservation_mode == "hospital":
        for slot, _ in rows:
            if slot.session_id != cs.id:
                continue
            mark = marks.get(slot.number)
            if mark and slot.status == "public" and slot.public_at > actor.now:
                slot.status = "reserved"
            elif mark is False and slot.status == "reserved":
                slot.status = "public"
    candidates = [
        Candidate(
            key=slot.id,
            starts_at=slot.starts_at,
            senior=title in SENIOR_TITLES,
            held=slot.status in POOL_HELD,
            reservable=slot.session_id == cs.id and slot.status == "public" and slot.public_at > actor.now,
        )
        for slot, title in rows
    ]
    measure = check_marked if hospital.reservation_mode == "hospital" else select_reserved
    selection = measure(
        candidates,
        ratio=policy.ratio,
        ratio_base=policy.ratio_base,
        min_senior_share=policy.min_senior_share,
    )
    for key in selection.held:
        if by_key[key].status == "public":
            by_key[key].status = "reserved"
    await session.flush()
    return selection


def pool_opens_at(public_at: datetime, policy: Policy) -> datetime:
    """R5: the pool opens the policy's lead time (at least a day) before the public release."""
    return public_at - timedelta(minutes=policy.lead_minutes)


def _lead_shortfall(item: SessionIn, policy: Policy, now: datetime) -> tuple[int, int] | None:
    """R5: a push that arrives after the pool should have opened gives the pool less lead."""
    if now <= pool_opens_at(item.public_at, policy):
        return None
    actual = max(0, int((item.public_at - now).total_seconds() // 60))
    return policy.lead_minutes, actual


async def _result(session: AsyncSession, cs: ClinicSession, outcome: str, *, version: int) -> SessionResult:
    slots = list(await session.scalars(select(Slot).where(Slot.session_id == cs.id).order_by(Slot.number)))
    dept = await session.get(Department, cs.department_id)
    assert dept is not None
    shortfalls = await session.scalars(
        select(ReservationShortfall).where(
            ReservationShortfall.department_id == cs.department_id,
            ReservationShortfall.service_date == cs.service_date,
            ReservationShortfall.resource_kind == cs.resource_kind,
        )
    )
    live = [s for s in slots if s.status != "withdrawn"]
    return SessionResult(
        external_id=cs.external_id,
        session_id=cs.id,
        result=outcome,
        version=version,
        pool_slot_numbers=[s.number for s in live if s.status in ("reserved", "booked")],
        pool_opens_at=live[0].pool_opens_at if live else None,
        public_at=live[0].public_at if live else None,
        shortfalls=[
            ShortfallOut(
                department_code=dept.code,
                service_date=sf.service_date,
                resource_kind=sf.resource_kind,
                kind=sf.kind,
                required=sf.required,
                actual=sf.actual,
            )
            for sf in shortfalls
        ],
    )
