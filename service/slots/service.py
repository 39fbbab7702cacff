"""Hospitals push clinic sessions; the pool applies the policy to each push (R1–R5, R16)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit import bounds
from service.kit.bounds import service_date_window
from service.kit.clock import local_date, local_datetime
from service.kit.context import Actor
from service.kit.crypto import Crypto
from service.kit.db import advisory_key
from service.kit.errors import Problem
from service.kit.resources import MAX_BED_WINDOW_MINUTES, MAX_SLOT_MINUTES
from service.models.registry import Department, Doctor, Organisation
from service.models.slots import ClinicSession, ReservationShortfall, Slot
from service.policy.service import policy_in_force
from service.slots.batch import GroupKey, PoolChange, apply_sessions, final_results
from service.slots.schemas import (
    ItemError,
    PushResult,
    ReservationChange,
    SessionIn,
    SessionResult,
    ShortfallOut,
)
from service.slots.shortfalls import record_shortfalls
from service.slots.withdrawal import withdraw_session

POOL_HELD = ("reserved", "offered", "booked", "returned")
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
    # Compared in UTC (slots' instants are parsed to UTC): no offset converted at each comparison.
    longest = timedelta(minutes=max_minutes)
    day = item.service_date
    day_starts, day_ends = (local_datetime(d, 0).astimezone(UTC) for d in (day, day + timedelta(days=1)))
    public_at = item.public_at.astimezone(UTC)
    for s in item.slots:
        starts_at, ends_at = s.starts_at, s.ends_at
        if ends_at <= starts_at:
            errors.append(
                ItemError(
                    code="slot_not_positive",
                    detail="A slot ends after it starts.",
                    slot_number=s.number,
                )
            )
        elif ends_at - starts_at > longest:
            errors.append(
                ItemError(
                    code="bed_window_too_long" if item.resource_kind == "bed" else "r16_slot_too_long",
                    detail="A bed's admission window lasts at most one day."
                    if item.resource_kind == "bed"
                    else f"A slot lasts at most {MAX_SLOT_MINUTES} minutes (R16).",
                    slot_number=s.number,
                )
            )
        if not day_starts <= starts_at < day_ends:  # its Beijing date is not the session's
            errors.append(
                ItemError(
                    code="slot_outside_service_date",
                    detail="The slot does not start on the session's date (Beijing time).",
                    slot_number=s.number,
                )
            )
        if starts_at < public_at:
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
) -> PushResult:
    """Apply the pushed sessions as if one by one, in order: one bad item never spoils another.

    Active sessions are applied set-based (``slots/batch.py``) in runs in which each session
    appears once. A withdrawal (停诊), which cancels referrals with their events, and a session
    pushed a second time in the same push end a run: the withdrawal is applied alone, in its own
    savepoint, and the repeated session starts the next run, which reads what the last one wrote
    and re-selects the withdrawn session's department-day too. Each result shows its session's
    pool slots as the whole push left them; the day's other sessions whose pool slots moved are
    listed in ``reservation_changes`` (R1–R4: one reservation per department-day).
    """
    today = local_date(actor.now)
    results: list[SessionResult | None] = [None] * len(items)
    run: list[int] = []
    in_run: set[str] = set()
    withdrawn_days: list[GroupKey] = []
    changes: dict[int, PoolChange] = {}
    segments = 0

    async def apply_run() -> None:
        nonlocal segments
        if run or withdrawn_days:
            outcome = await apply_sessions(
                session=session,
                actor=actor,
                hospital=hospital,
                items=[items[n] for n in run],
                reselect=list(withdrawn_days),
            )
            segments += 1
            for n, result in zip(run, outcome.results, strict=True):
                results[n] = result
            for change in outcome.changes:  # the first read's pool, the last run's
                first = changes.get(change.session_id)
                changes[change.session_id] = change if first is None else replace(change, before=first.before)
            run.clear()
            in_run.clear()
            withdrawn_days.clear()

    for n, item in enumerate(items):
        errors = validate_session(item, today)
        if errors:
            results[n] = _rejected(item, errors)
        elif item.status == "withdrawn":
            await apply_run()
            results[n], day = await _withdraw_item(
                session=session, actor=actor, crypto=crypto, hospital=hospital, item=item
            )
            segments += 1
            if day is not None:
                withdrawn_days.append(day)
        else:
            if item.external_id in in_run:
                await apply_run()
            run.append(n)
            in_run.add(item.external_id)
    await apply_run()
    final = [r for r in results if r is not None]
    if segments > 1:
        await final_results(session, final)
    return PushResult(results=final, reservation_changes=_changes_told(changes, final))


def _changes_told(changes: dict[int, PoolChange], results: list[SessionResult]) -> list[ReservationChange]:
    """The moved sessions the results do not already show: none an item created, updated or withdrew."""
    shown = {r.session_id for r in results if r.result in ("created", "updated", "withdrawn")}
    told: list[ReservationChange] = []
    for session_id, change in sorted(changes.items()):
        after = {number for number, _ in change.after}
        if session_id in shown or after == change.before:
            continue
        _, service_date, resource_kind = change.group
        told.append(
            ReservationChange(
                session_id=session_id,
                external_id=change.external_id,
                department_code=change.department_code,
                service_date=service_date,
                resource_kind=resource_kind,
                pool_slot_numbers=[number for number, _ in change.after],
                pool_slot_ids=[slot_id for _, slot_id in change.after],
                added_slot_numbers=sorted(after - change.before),
                removed_slot_numbers=sorted(change.before - after),
            )
        )
    return told


def _rejected(item: SessionIn, errors: list[ItemError]) -> SessionResult:
    return SessionResult(external_id=item.external_id, result="rejected", version=item.version, errors=errors)


async def push_hospital_sessions(
    *, session: AsyncSession, actor: Actor, crypto: Crypto, hospital_id: int, items: list[SessionIn]
) -> PushResult:
    """``push_sessions`` for the hospital ``hospital_id`` (the pushing client's organisation)."""
    hospital = await session.get(Organisation, hospital_id)
    assert hospital is not None
    return await push_sessions(session=session, actor=actor, crypto=crypto, hospital=hospital, items=items)


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


async def _withdraw_item(
    *, session: AsyncSession, actor: Actor, crypto: Crypto, hospital: Organisation, item: SessionIn
) -> tuple[SessionResult, GroupKey | None]:
    """A withdrawn item, in its own savepoint: a refusal leaves nothing of it behind.

    With the result comes the department-day the withdrawal changed, to be re-selected.
    """
    try:
        async with session.begin_nested():
            result, cs = await _withdraw(
                session=session, actor=actor, crypto=crypto, hospital=hospital, item=item
            )
    except (ItemRejected, Problem) as exc:
        errors = (
            exc.errors if isinstance(exc, ItemRejected) else [ItemError(code=exc.code, detail=exc.detail)]
        )
        return _rejected(item, errors), None
    if result.result != "withdrawn":
        return result, None
    return result, (cs.department_id, cs.service_date, cs.resource_kind)


async def _withdraw(
    *, session: AsyncSession, actor: Actor, crypto: Crypto, hospital: Organisation, item: SessionIn
) -> tuple[SessionResult, ClinicSession]:
    """停诊 (R13, R19): the session withdrawn, its referrals cancelled, its measured shortfalls dropped."""
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
        return await _result(session, existing, outcome, version=existing.version), existing

    department = await _upsert_department(session, hospital.id, item)
    doctor = await _upsert_doctor(session, hospital.id, item)
    policy = await policy_in_force(
        session=session, hospital_id=hospital.id, on=item.service_date, kind=item.resource_kind
    )
    await lock_department_day(session, department.id, item.service_date)

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
    existing.withdrawn_reason = item.withdrawn_reason
    existing.location = item.location
    existing.policy_id = policy.id
    existing.updated_at = actor.now
    await session.flush()

    await withdraw_session(
        session=session,
        actor=actor,
        crypto=crypto,
        clinic_session=existing,
        reason=item.withdrawn_reason or "The hospital withdrew this session (停诊).",
    )
    await record_shortfalls(session, actor, hospital, department, existing, policy, None)
    return await _result(session, existing, "withdrawn", version=item.version), existing


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
        pool_slot_numbers=[s.number for s in live if s.status in ("reserved", "offered", "booked")],
        pool_slot_ids=[s.id for s in live if s.status in ("reserved", "offered", "booked")],
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
