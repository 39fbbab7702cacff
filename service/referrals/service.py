"""Booking, cancelling and reading pool referrals (R5–R12, R17)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.abuse.hotline import HotlineLimits, count_failure, lock_attempts, refusal_if_locked
from service.attendance.bars import refuse_if_barred
from service.audit.service import record, record_read
from service.events.service import emit
from service.identity.suspensions import refuse_if_suspended
from service.kit.clock import SHANGHAI, local_date, zh_instant
from service.kit.context import Actor, Caller
from service.kit.crypto import Crypto, mask_id_number, mask_name
from service.kit.dberrors import constraint_name
from service.kit.errors import Conflict, Forbidden, NotFound, Problem, Unprocessable
from service.kit.regions import city_of, covers, province_of
from service.limits.service import enforce_booking_limits
from service.models.policy import HospitalPolicy, Policy
from service.models.referrals import REFERRAL_RESIDENT_NAME, IdempotencyKey, Referral
from service.models.registry import (
    Alliance,
    AllianceMember,
    Department,
    Doctor,
    Organisation,
)
from service.models.residents import CONTRACT_NAME, FamilyDoctorContract, Resident
from service.models.slots import ClinicSession, Slot
from service.policy.service import policy_in_force
from service.referrals.schemas import (
    AttendanceOut,
    BookableSlot,
    BookingIn,
    Consultation,
    DoctorOut,
    NamedRef,
    Notice,
    ReceiptOut,
    ReferralOut,
    SlotOut,
    WardOut,
)
from service.residents.idnumber import InvalidIdNumber, normalise_id_number

REFERENCE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


# --- scope (R3, R7) -----------------------------------------------------------------


async def _alliance_members(session: AsyncSession, hospital_id: int) -> set[int]:
    rows = await session.scalars(
        select(AllianceMember.organisation_id)
        .join(Alliance, Alliance.id == AllianceMember.alliance_id)
        .where(Alliance.lead_hospital_id == hospital_id)
    )
    return set(rows)


def scope_admits(scope: str, hospital: Organisation, booker: Organisation, members: set[int]) -> bool:
    """Whether ``booker`` may book ``hospital``'s pool under ``scope`` (R3, R7)."""
    if scope == "by_tier":
        scope = "jurisdiction" if hospital.hospital_tier == "county" else "city"
    if scope == "lower_tier":
        return (
            booker.kind == "hospital"
            and booker.hospital_tier in ("city", "county")
            and province_of(booker.region_code) == province_of(hospital.region_code)
        )
    if booker.kind != "primary":
        return False
    if scope == "city":
        return city_of(booker.region_code) == city_of(hospital.region_code)
    if scope == "jurisdiction":
        return booker.region_code == hospital.region_code
    if scope == "alliance":
        return booker.id in members
    return False


async def admits(
    *, session: AsyncSession, policy: Policy, hospital: Organisation, booker: Organisation
) -> bool:
    """Whether ``policy``, in force at ``hospital``, lets ``booker`` book its pool (R3, R7)."""
    members = await _alliance_members(session, hospital.id) if policy.scope == "alliance" else set()
    return scope_admits(policy.scope, hospital, booker, members)


async def pools_in_scope(*, session: AsyncSession, booker: Organisation, on: date) -> list[tuple[int, str]]:
    """Every (hospital, resource kind) pool ``booker`` may book under the kind's policy in force on ``on``.

    Each kind has its own policy (R18), hence its own scope: a hospital may open its CT
    pool city-wide and its outpatient pool to its alliance only.
    """
    rows = (
        await session.execute(
            select(Organisation, HospitalPolicy.resource_kind)
            .join(HospitalPolicy, HospitalPolicy.hospital_id == Organisation.id)
            .order_by(Organisation.id, HospitalPolicy.resource_kind)
        )
    ).all()
    allowed: list[tuple[int, str]] = []
    for hospital, kind in rows:
        try:
            policy = await policy_in_force(session=session, hospital_id=hospital.id, on=on, kind=kind)
        except Problem:
            continue
        if await admits(session=session, policy=policy, hospital=hospital, booker=booker):
            allowed.append((hospital.id, kind))
    return allowed


# --- searching --------------------------------------------------------------------


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
    verdicts: dict[tuple[int, str, date], bool] = {}
    bookable = []
    for row in rows[:limit]:
        cs, hosp = row[1], row[4]
        key = (hosp.id, cs.resource_kind, cs.service_date)
        if key not in verdicts:
            policy = await policy_in_force(
                session=session, hospital_id=hosp.id, on=cs.service_date, kind=cs.resource_kind
            )
            verdicts[key] = await admits(session=session, policy=policy, hospital=hosp, booker=booker)
        if verdicts[key]:
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


def doctor_out(doctor: Doctor | None) -> DoctorOut | None:
    return DoctorOut(code=doctor.code, name=doctor.name, title=doctor.title) if doctor else None


def ward_out(cs: ClinicSession) -> WardOut | None:
    if cs.ward_code is None or cs.ward_name is None:
        return None
    return WardOut(code=cs.ward_code, name=cs.ward_name)


# --- booking ------------------------------------------------------------------------


def request_hash(body: dict[str, Any]) -> bytes:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).digest()


# How long a stored answer is replayed; after it the key is free and the request is a new one.
IDEMPOTENCY_WINDOW = timedelta(hours=24)


async def claim_idempotency_key(
    *, session: AsyncSession, actor: Actor, crypto: Crypto, client_id: int, key: str, body_hash: bytes
) -> tuple[int, dict[str, Any]] | None:
    """Claim ``key`` for this request, or return the answer stored by the first request.

    A concurrent request with the same key waits on the primary key until the
    first one commits (then gets its answer) or rolls back (then proceeds). A key
    whose answer is older than ``IDEMPOTENCY_WINDOW`` is claimed afresh, whether or
    not the purge has deleted it yet.
    """
    stmt = insert(IdempotencyKey).values(
        client_id=client_id,
        key=key,
        request_hash=body_hash,
        response_status=0,
        response_body={},
        created_at=actor.now,
    )
    claimed = await session.scalar(
        stmt.on_conflict_do_update(
            index_elements=[IdempotencyKey.client_id, IdempotencyKey.key],
            set_={
                "request_hash": stmt.excluded.request_hash,
                "response_status": stmt.excluded.response_status,
                "response_body": stmt.excluded.response_body,
                "created_at": stmt.excluded.created_at,
            },
            where=IdempotencyKey.created_at <= actor.now - IDEMPOTENCY_WINDOW,
        ).returning(IdempotencyKey.key)
    )
    if claimed is not None:
        return None
    stored = await session.get(IdempotencyKey, (client_id, key), populate_existing=True)
    assert stored is not None
    if not hmac.compare_digest(stored.request_hash, body_hash):
        raise Unprocessable(
            "idempotency_key_reused", "This Idempotency-Key was used for a different request."
        )
    return stored.response_status, await _with_code(session, crypto, stored.response_body)


async def _with_code(session: AsyncSession, crypto: Crypto, body: dict[str, Any]) -> dict[str, Any]:
    """The stored answer with its verification code read back from the referral, where it is encrypted."""
    encrypted = await session.scalar(
        select(Referral.verification_code_enc).where(Referral.reference == body.get("reference"))
    )
    if encrypted is None:
        return body
    return {**body, "verification_code": crypto.decrypt(encrypted, column="referrals.verification_code")}


async def store_idempotent_answer(
    *, session: AsyncSession, client_id: int, key: str, status: int, body: dict[str, Any]
) -> None:
    """Keep the answer for replays, without the verification code: a secret has no place there."""
    stored = await session.get(IdempotencyKey, (client_id, key))
    assert stored is not None
    stored.response_status = status
    stored.response_body = {**body, "verification_code": None}
    await session.flush()


async def purge_idempotency_keys(*, session: AsyncSession, now: datetime, batch_size: int) -> int:
    """Delete one batch of stored answers past their window; the count tells the caller whether to go on."""
    due = (
        select(IdempotencyKey.client_id, IdempotencyKey.key)
        .where(IdempotencyKey.created_at <= now - IDEMPOTENCY_WINDOW)
        .limit(batch_size)
        .with_for_update(skip_locked=True)
    )
    result = await session.execute(
        delete(IdempotencyKey).where(tuple_(IdempotencyKey.client_id, IdempotencyKey.key).in_(due))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def _new_reference(day: date) -> str:
    tail = "".join(secrets.choice(REFERENCE_ALPHABET) for _ in range(6))
    return f"R{day:%y%m%d}{tail}"


async def _find_resident(session: AsyncSession, crypto: Crypto, id_number: str) -> Resident | None:
    index = crypto.blind_index(id_number, purpose="resident_id")
    return await session.scalar(select(Resident).where(Resident.id_index == index))


async def _ensure_resident(
    session: AsyncSession, crypto: Crypto, actor: Actor, id_number: str, name: str
) -> Resident:
    """For lower-tier hospital bookers (R3): the patient need not have a family-doctor contract."""
    index = crypto.blind_index(id_number, purpose="resident_id")
    # ON CONFLICT: two first bookings for the same new patient may race; both get the one row.
    await session.execute(
        insert(Resident)
        .values(
            id_index=index,
            id_number_enc=crypto.encrypt(id_number, column="residents.id_number"),
            name_enc=crypto.encrypt(name, column="residents.name"),
            created_at=actor.now,
            updated_at=actor.now,
        )
        .on_conflict_do_nothing(index_elements=["id_index"])
    )
    resident = await _find_resident(session, crypto, id_number)
    assert resident is not None
    return resident


async def _names_on_record(
    session: AsyncSession, crypto: Crypto, resident: Resident, today: date
) -> set[str]:
    """For a booker without a contract: the name first registered, and any contract's in force."""
    contracts = await session.scalars(
        select(FamilyDoctorContract.name_enc).where(
            FamilyDoctorContract.resident_id == resident.id,
            FamilyDoctorContract.starts_on <= today,
            FamilyDoctorContract.ends_on >= today,
        )
    )
    names = {crypto.decrypt(blob, column=CONTRACT_NAME) for blob in contracts}
    names.add(crypto.decrypt(resident.name_enc, column="residents.name"))
    return names


async def book_referral(
    *,
    session: AsyncSession,
    actor: Actor,
    caller: Caller,
    crypto: Crypto,
    booking: BookingIn,
    lock_timeout_ms: int,
) -> ReferralOut:
    """Book one reserved slot for one resident; every rule is checked in this transaction."""
    now = actor.now
    await session.execute(text(f"SET LOCAL lock_timeout = '{int(lock_timeout_ms)}ms'"))
    booker = await session.get(Organisation, caller.org_id)
    assert booker is not None
    doctor = await session.scalar(
        select(Doctor).where(
            Doctor.organisation_id == caller.org_id, Doctor.code == booking.referring_doctor_code
        )
    )
    if doctor is None:
        raise Unprocessable(
            "referring_doctor_unknown",
            "The referring doctor is not a doctor of the calling institution.",
        )
    await refuse_if_suspended(session, subject_type="doctor", subject_id=doctor.id, now=now)
    try:
        id_number = normalise_id_number(booking.resident.id_number, today=local_date(now))
    except InvalidIdNumber as exc:
        raise Unprocessable("invalid_id_number", str(exc), reason=exc.reason) from None

    slot = await session.scalar(select(Slot).where(Slot.id == booking.slot_id).with_for_update())
    if slot is None:
        raise NotFound("slot_not_found", f"No slot {booking.slot_id}.")
    cs = await session.get(ClinicSession, slot.session_id)
    hospital = await session.get(Organisation, slot.hospital_id)
    assert cs is not None and hospital is not None
    policy = await policy_in_force(
        session=session, hospital_id=hospital.id, on=cs.service_date, kind=cs.resource_kind
    )
    if not await admits(session=session, policy=policy, hospital=hospital, booker=booker):
        raise Forbidden(
            "out_of_scope",
            f"This hospital's pool is open to {policy.scope.replace('_', ' ')} bookers only (R7).",
            hospital_id=hospital.id,
        )

    _check_slot_window(slot, now)

    name = booking.resident.name.strip()
    if booker.kind == "primary":
        resident = await _find_resident(session, crypto, id_number)
        contracts: list[FamilyDoctorContract] = []
        if resident is not None:
            contracts = list(
                await session.scalars(
                    select(FamilyDoctorContract).where(
                        FamilyDoctorContract.resident_id == resident.id,
                        FamilyDoctorContract.family_doctor_id == doctor.id,
                        FamilyDoctorContract.institution_id == booker.id,
                        FamilyDoctorContract.starts_on <= local_date(now),
                        FamilyDoctorContract.ends_on >= local_date(now),
                    )
                )
            )
        if resident is None or not contracts:
            raise Unprocessable(
                "not_signed",
                "The resident has no family-doctor contract in force with this doctor (R8).",
            )
        # The booker answers to its own contract only: another institution's declaration
        # neither vouches for nor refuses this name (docs/identity.md).
        declared = {crypto.decrypt(c.name_enc, column=CONTRACT_NAME) for c in contracts}
    else:
        resident = await _ensure_resident(session, crypto, actor, id_number, name)
        declared = await _names_on_record(session, crypto, resident, local_date(now))
    if name not in declared:
        raise Unprocessable(
            "name_mismatch",
            "The name does not match the name declared on your contract with this resident (R8)."
            if booker.kind == "primary"
            else "The name does not match the resident's name on record (R8).",
        )
    await refuse_if_barred(session, hospital_id=hospital.id, resident_id=resident.id, on=local_date(now))

    encountered = booking.consultation.encountered_at
    if encountered > now or now - encountered > timedelta(hours=policy.consultation_max_age_hours):
        raise Unprocessable(
            "consultation_out_of_window",
            f"The consultation must be within the last {policy.consultation_max_age_hours} hours (R9).",
        )
    covered = [d for d in booking.diagnoses if d.startswith(tuple(policy.disease_prefixes))]
    if not covered:
        raise Unprocessable(
            "disease_not_covered",
            "No diagnosis is on this hospital's referral disease list (R10).",
            allowed_prefixes=policy.disease_prefixes,
        )
    duplicate = await session.scalar(
        select(Referral.reference).where(
            Referral.resident_id == resident.id,
            Referral.department_id == cs.department_id,
            Referral.service_date == cs.service_date,
            Referral.status == "booked",
        )
    )
    if duplicate is not None:
        raise _duplicate_referral()
    await enforce_booking_limits(
        session=session,
        policy=policy,
        now=now,
        doctor_id=doctor.id,
        institution_id=booker.id,
        hospital_id=hospital.id,
        resource_kind=cs.resource_kind,
        service_date=cs.service_date,
        resident_id=resident.id,
    )

    code = f"{secrets.randbelow(1_000_000):06d}"
    referral = Referral(
        reference=_new_reference(cs.service_date),
        hospital_id=hospital.id,
        department_id=cs.department_id,
        session_id=cs.id,
        slot_id=slot.id,
        service_date=cs.service_date,
        resident_id=resident.id,
        resident_name_enc=crypto.encrypt(name, column=REFERRAL_RESIDENT_NAME),
        booker_org_id=booker.id,
        referring_doctor_id=doctor.id,
        booked_by_client_id=caller.client_id,
        policy_id=policy.id,
        encounter_id=booking.consultation.encounter_id,
        encountered_at=encountered,
        diagnoses=list(booking.diagnoses),
        verification_code_enc=crypto.encrypt(code, column="referrals.verification_code"),
        status="booked",
        booked_at=now,
    )
    slot.status = "booked"
    session.add(referral)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:
        # The database is the last word on both invariants, even if a check above raced.
        if constraint_name(exc) == "uq_referrals_active_slot":
            raise Conflict("slot_taken", "The slot was booked by another request.") from exc
        if constraint_name(exc) == "uq_referrals_active_resident_department_day":
            raise _duplicate_referral() from exc
        raise
    out = await referral_out(session=session, crypto=crypto, referral=referral, show_code=True)
    await emit(
        session=session,
        hospital_id=hospital.id,
        event_type="referral.booked",
        data=referral_event_data(out),
        at=now,
    )
    await record(
        session=session,
        actor=actor,
        action="referral.booked",
        hospital_id=hospital.id,
        resident_id=resident.id,
        referral_id=referral.id,
        detail={"reference": referral.reference, "slot_id": slot.id, "policy_id": policy.id},
    )
    return out


def _duplicate_referral() -> Conflict:
    return Conflict(
        "duplicate_referral", "The resident already has an active referral to this department on this day."
    )


def _check_slot_window(slot: Slot, now: datetime) -> None:
    """R5/R6: bookable through the pool only while pool_opens_at <= now < public_at.

    Slots start at or after public_at (push validation), so a bookable slot has not started.
    """
    if slot.status == "booked":
        raise Conflict("slot_taken", "The slot is already booked through the pool.")
    if slot.status == "returned" or (slot.status == "reserved" and now >= slot.public_at):
        raise Conflict(
            "window_closed",
            "The slot has returned to the public pool (R6).",
            public_at=slot.public_at.isoformat(),
        )
    if slot.status != "reserved":
        raise Conflict("slot_not_in_pool", "The slot is not reserved for the pool.")
    if now < slot.pool_opens_at:
        raise Conflict(
            "window_not_open",
            "The pool window for this slot has not opened yet (R5).",
            pool_opens_at=slot.pool_opens_at.isoformat(),
        )


async def record_refusal(
    *, session: AsyncSession, actor: Actor, problem: Problem, booking: BookingIn
) -> None:
    """A refusal that reached the rules, recorded after the booking transaction rolled back."""
    hospital_id = await session.scalar(select(Slot.hospital_id).where(Slot.id == booking.slot_id))
    await record(
        session=session,
        actor=actor,
        action="referral.refused",
        code=problem.code,
        hospital_id=hospital_id,
        reason=problem.detail,
        detail={"slot_id": booking.slot_id, "referring_doctor_code": booking.referring_doctor_code},
    )


# --- cancelling (R12) -----------------------------------------------------------------


async def _release_slot(session: AsyncSession, slot: Slot, now: datetime) -> str:
    """After a cancellation the slot returns to the pool while its window is open, else to the public."""
    if now < slot.public_at:
        slot.status = "reserved"
        return "pool"
    slot.status = "returned"
    slot.returned_at = now
    await emit_slots_returned(session=session, slots=[slot], at=now)
    return "public"


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
                "session": session_event_data(
                    external_id=cs.external_id,
                    service_date=cs.service_date,
                    period=cs.period,
                    resource_kind=cs.resource_kind,
                    modality=cs.modality,
                    ward=ward_out(cs),
                ),
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


async def _cancel(
    session: AsyncSession,
    actor: Actor,
    crypto: Crypto,
    referral: Referral,
    *,
    by: str,
    reason: str,
    enforce_cutoff: bool,
    release_slot: bool = True,
) -> ReferralOut:
    """Cancel one referral; its slot goes back to the pool or the public unless the caller keeps it."""
    now = actor.now
    if referral.status != "booked":
        raise Conflict("already_cancelled", "The referral is already cancelled.")
    slot = await session.scalar(select(Slot).where(Slot.id == referral.slot_id).with_for_update())
    assert slot is not None
    if enforce_cutoff:
        policy = await session.get(Policy, referral.policy_id)
        assert policy is not None
        deadline = slot.starts_at - timedelta(minutes=policy.cancel_cutoff_minutes)
        if now > deadline:
            raise Conflict(
                "cancellation_closed",
                f"Cancellation closes {policy.cancel_cutoff_minutes} minutes before the slot (R12).",
                deadline=deadline.isoformat(),
            )
    referral.status = "cancelled"
    referral.cancelled_at = now
    referral.cancelled_by = by
    referral.cancelled_by_client_id = actor.client_id
    referral.cancel_reason = reason
    returned_to = await _release_slot(session, slot, now) if release_slot else None
    await session.flush()
    out = await referral_out(session=session, crypto=crypto, referral=referral, show_code=False)
    data = referral_event_data(out)
    data["cancellation"] = {"by": by, "reason": reason, "slot_returned_to": returned_to}
    await emit(
        session=session,
        hospital_id=referral.hospital_id,
        event_type="referral.cancelled",
        data=data,
        at=now,
    )
    await record(
        session=session,
        actor=actor,
        action="referral.cancelled",
        hospital_id=referral.hospital_id,
        resident_id=referral.resident_id,
        referral_id=referral.id,
        reason=reason,
        detail={"by": by, "slot_returned_to": returned_to},
    )
    return out


async def _referral_by_reference(session: AsyncSession, reference: str) -> Referral | None:
    return await session.scalar(select(Referral).where(Referral.reference == reference).with_for_update())


async def cancel_by_institution(
    *,
    session: AsyncSession,
    actor: Actor,
    caller: Caller,
    crypto: Crypto,
    reference: str,
    reason: str,
) -> ReferralOut:
    """The referring institution (for its family doctor) cancels its own referral."""
    referral = await _referral_by_reference(session, reference)
    if referral is None or referral.booker_org_id != caller.org_id:
        raise NotFound("referral_not_found", f"No referral {reference} of yours.")
    return await _cancel(
        session, actor, crypto, referral, by="family_doctor", reason=reason, enforce_cutoff=True
    )


def _verification_failed() -> Unprocessable:
    # One answer for an unknown reference, another region's referral and a wrong code, so the
    # answer never tells a guesser which references exist.
    return Unprocessable(
        "verification_failed",
        "The reference and verification code do not match a referral in this hotline's region.",
    )


async def cancel_by_hotline(
    *,
    session: AsyncSession,
    actor: Actor,
    caller: Caller,
    crypto: Crypto,
    reference: str,
    verification_code: str,
    reason: str,
    limits: HotlineLimits,
) -> ReferralOut | Problem:
    """The hotline cancels for a caller who knows the reference and the verification code.

    A failed or locked verification is recorded and *returned*, not raised, so that the record
    commits with the transaction; the route raises it afterwards (docs/abuse-limits.md).
    """
    now = actor.now
    attempts = await lock_attempts(session=session, client_id=caller.client_id, reference=reference, now=now)
    row = (
        await session.execute(
            select(Referral, Organisation.region_code)
            .join(Organisation, Organisation.id == Referral.hospital_id)
            .where(Referral.reference == reference)
            .with_for_update(of=Referral)
        )
    ).first()
    referral = row[0] if row is not None and covers(caller.region_code, row[1]) else None
    locked = refusal_if_locked(attempts, now)
    if locked is not None:
        await record(
            session=session,
            actor=actor,
            action="hotline.verification_locked",
            code=locked.code,
            hospital_id=referral.hospital_id if referral else None,
            referral_id=referral.id if referral else None,
            detail={"reference": reference, "retry_after_seconds": int(locked.headers["Retry-After"])},
        )
        return locked
    # Compare against a random code when there is no referral, so both paths do the same work.
    expected = (
        crypto.decrypt(referral.verification_code_enc, column="referrals.verification_code")
        if referral is not None
        else f"{secrets.randbelow(1_000_000):06d}"
    )
    matches = hmac.compare_digest(expected, verification_code)
    if referral is None or not matches:
        count_failure(attempts, now, limits)
        await record(
            session=session,
            actor=actor,
            action="hotline.verification_failed",
            code="verification_failed",
            hospital_id=referral.hospital_id if referral else None,
            referral_id=referral.id if referral else None,
            detail={
                "reference": reference,
                "referral_found": referral is not None,
                "reference_locked_until": _iso(attempts.reference.locked_until, now),
                "client_locked_until": _iso(attempts.client.locked_until, now),
            },
        )
        await session.flush()
        return _verification_failed()
    return await _cancel(session, actor, crypto, referral, by="hotline", reason=reason, enforce_cutoff=True)


def _iso(until: datetime | None, now: datetime) -> str | None:
    return until.isoformat() if until is not None and until > now else None


async def cancel_by_commission(
    *, session: AsyncSession, actor: Actor, crypto: Crypto, referral: Referral, reason: str
) -> ReferralOut:
    """The commission cancels a referral of a party whose access it suspends or revokes (R14)."""
    return await _cancel(
        session, actor, crypto, referral, by="commission", reason=reason, enforce_cutoff=False
    )


async def cancel_for_withdrawal(
    *,
    session: AsyncSession,
    actor: Actor,
    crypto: Crypto,
    clinic_session: ClinicSession,
    reason: str,
) -> None:
    """停诊: cancel every active referral of the session and withdraw its slots."""
    referrals = await session.scalars(
        select(Referral)
        .where(Referral.session_id == clinic_session.id, Referral.status == "booked")
        .order_by(Referral.id)
        .with_for_update()
    )
    for referral in referrals:
        await _cancel(
            session,
            actor,
            crypto,
            referral,
            by="hospital",
            reason=reason,
            enforce_cutoff=False,
            release_slot=False,
        )
    slots = await session.scalars(select(Slot).where(Slot.session_id == clinic_session.id).with_for_update())
    for slot in slots:
        slot.status = "withdrawn"
    await session.flush()


# --- reading ----------------------------------------------------------------------------


async def referral_out(
    *, session: AsyncSession, crypto: Crypto, referral: Referral, show_code: bool
) -> ReferralOut:
    slot = await session.get(Slot, referral.slot_id)
    cs = await session.get(ClinicSession, referral.session_id)
    hospital = await session.get(Organisation, referral.hospital_id)
    dept = await session.get(Department, referral.department_id)
    booker = await session.get(Organisation, referral.booker_org_id)
    referring = await session.get(Doctor, referral.referring_doctor_id)
    resident = await session.get(Resident, referral.resident_id)
    policy = await session.get(Policy, referral.policy_id)
    assert slot and cs and hospital and dept and booker and referring and resident and policy
    doctor = await session.get(Doctor, cs.doctor_id) if cs.doctor_id is not None else None
    ward = ward_out(cs)
    # The name the referral was booked under, whatever any institution declares since.
    name = crypto.decrypt(referral.resident_name_enc, column=REFERRAL_RESIDENT_NAME)
    id_number = crypto.decrypt(resident.id_number_enc, column="residents.id_number")
    start_local = slot.starts_at.astimezone(SHANGHAI)
    end_local = slot.ends_at.astimezone(SHANGHAI)
    deadline = slot.starts_at - timedelta(minutes=policy.cancel_cutoff_minutes)
    notice = Notice(
        hospital=hospital.name,
        department=dept.name,
        resource_kind=cs.resource_kind,
        modality=cs.modality,
        ward=ward.name if ward else None,
        doctor=doctor.name if doctor else None,
        doctor_title=doctor.title if doctor else None,
        service_date=cs.service_date,
        period=cs.period,
        time_band=f"{start_local:%H:%M}-{end_local:%H:%M}",
        slot_number=slot.number,
        reference=referral.reference,
        how_to_cancel=(
            f"如不能按时就诊，请于{zh_instant(deadline)}前拨打{policy.cancel_hotline}，"
            "提供转诊编号和验证码取消预约，或联系您的家庭医生。"
        ),
        cancel_hotline=policy.cancel_hotline,
        cancel_deadline=deadline,
        no_show_rule=str(policy.no_show_rule.get("text", "")),
    )
    code = (
        crypto.decrypt(referral.verification_code_enc, column="referrals.verification_code")
        if show_code
        else None
    )
    return ReferralOut(
        reference=referral.reference,
        status=referral.status,
        verification_code=code,
        hospital=NamedRef(id=hospital.id, code=hospital.code, name=hospital.name),
        department=NamedRef(id=dept.id, code=dept.code, name=dept.name),
        resource_kind=cs.resource_kind,
        modality=cs.modality,
        ward=ward,
        doctor=doctor_out(doctor),
        slot=SlotOut(
            id=slot.id,
            number=slot.number,
            external_id=slot.external_id,
            starts_at=slot.starts_at,
            ends_at=slot.ends_at,
        ),
        session_external_id=cs.external_id,
        service_date=cs.service_date,
        period=cs.period,
        resident_name_masked=mask_name(name),
        resident_id_masked=mask_id_number(id_number),
        referring_institution=NamedRef(id=booker.id, code=booker.code, name=booker.name),
        referring_doctor=DoctorOut(code=referring.code, name=referring.name, title=referring.title),
        consultation=Consultation(encounter_id=referral.encounter_id, encountered_at=referral.encountered_at),
        diagnoses=referral.diagnoses,
        booked_at=referral.booked_at,
        cancelled_at=referral.cancelled_at,
        cancelled_by=referral.cancelled_by,
        cancel_reason=referral.cancel_reason,
        notice=notice,
        policy=f"{policy.code} v{policy.version}",
        attendance=AttendanceOut(
            outcome=referral.attendance,
            reported_at=referral.attendance_reported_at,
            note=referral.attendance_note,
        )
        if referral.attendance is not None and referral.attendance_reported_at is not None
        else None,
        received=ReceiptOut(received_at=referral.received_at, his_reference=referral.his_reference)
        if referral.received_at is not None
        else None,
    )


def instant(when: datetime) -> str:
    """Event timestamps: ISO 8601 in UTC, whatever offset the value arrived with."""
    return when.astimezone(UTC).isoformat()


def session_event_data(
    *,
    external_id: str,
    service_date: date,
    period: str,
    resource_kind: str,
    modality: str | None,
    ward: WardOut | None,
) -> dict[str, Any]:
    """The session as events describe it: which day, and which resource (R18)."""
    return {
        "external_id": external_id,
        "service_date": service_date.isoformat(),
        "period": period,
        "resource_kind": resource_kind,
        "modality": modality,
        "ward": ward.model_dump() if ward else None,
    }


def referral_event_data(out: ReferralOut) -> dict[str, Any]:
    """What a HIS needs to act on a referral; never the ID number or the verification code."""
    return {
        "referral": {
            "reference": out.reference,
            "status": out.status,
            "channel": out.channel,
            "priority": out.priority,
        },
        "slot": {
            "number": out.slot.number,
            "external_id": out.slot.external_id,
            "starts_at": instant(out.slot.starts_at),
            "ends_at": instant(out.slot.ends_at),
        },
        "session": session_event_data(
            external_id=out.session_external_id,
            service_date=out.service_date,
            period=out.period,
            resource_kind=out.resource_kind,
            modality=out.modality,
            ward=out.ward,
        ),
        "department": {"code": out.department.code, "name": out.department.name},
        "doctor": out.doctor.model_dump() if out.doctor else None,
        "patient": {"name_masked": out.resident_name_masked},
        "referring": {
            "institution": {
                "code": out.referring_institution.code,
                "name": out.referring_institution.name,
            },
            "doctor": {"name": out.referring_doctor.name, "title": out.referring_doctor.title},
        },
        "consultation": {
            "encounter_id": out.consultation.encounter_id,
            "encountered_at": instant(out.consultation.encountered_at),
        },
        "diagnoses": out.diagnoses,
    }


async def get_referral(
    *, session: AsyncSession, caller: Caller, crypto: Crypto, reference: str
) -> ReferralOut:
    """A referral, to the institution that made it or the hospital that receives it (OWASP API1)."""
    referral = await session.scalar(select(Referral).where(Referral.reference == reference))
    visible = referral is not None and (
        (caller.role == "primary" and referral.booker_org_id == caller.org_id)
        or (caller.role == "hospital" and referral.hospital_id == caller.org_id)
    )
    if not visible or referral is None:
        raise NotFound("referral_not_found", f"No referral {reference} visible to you.")
    return await referral_out(
        session=session, crypto=crypto, referral=referral, show_code=caller.role == "primary"
    )


async def read_referral(
    *, session: AsyncSession, actor: Actor, caller: Caller, crypto: Crypto, reference: str
) -> ReferralOut:
    """``get_referral``, with the read recorded in the audit trail (R15)."""
    out = await get_referral(session=session, caller=caller, crypto=crypto, reference=reference)
    referral = await session.scalar(select(Referral).where(Referral.reference == reference))
    assert referral is not None
    await record_read(
        session=session,
        actor=actor,
        action="referral.read",
        hospital_id=referral.hospital_id,
        reads=[(referral.id, referral.resident_id)],
        detail={"via": "api"},
    )
    return out


async def list_referrals(
    *,
    session: AsyncSession,
    actor: Actor,
    caller: Caller,
    crypto: Crypto,
    service_date: date | None,
    department_code: str | None,
    status: str | None,
    after: tuple[date, int] | None,
    limit: int,
) -> tuple[list[ReferralOut], tuple[date, int] | None]:
    """The caller's referrals: those it made (primary) or receives (hospital), by date then id.

    ``after`` is the (service date, id) of the last item of the previous page; the
    second value returned is that of this page's last item when more follow.
    """
    stmt = select(Referral).order_by(Referral.service_date, Referral.id).limit(limit + 1)
    if caller.role == "hospital":
        stmt = stmt.where(Referral.hospital_id == caller.org_id)
    else:
        stmt = stmt.where(Referral.booker_org_id == caller.org_id)
    if service_date is not None:
        stmt = stmt.where(Referral.service_date == service_date)
    if status is not None:
        stmt = stmt.where(Referral.status == status)
    if department_code is not None:
        stmt = stmt.join(Department, Department.id == Referral.department_id).where(
            Department.code == department_code
        )
    if after is not None:
        stmt = stmt.where(tuple_(Referral.service_date, Referral.id) > tuple_(*after))
    rows = list(await session.scalars(stmt))
    following = (rows[limit - 1].service_date, rows[limit - 1].id) if len(rows) > limit else None
    items = [
        await referral_out(session=session, crypto=crypto, referral=r, show_code=caller.role == "primary")
        for r in rows[:limit]
    ]
    await record_read(
        session=session,
        actor=actor,
        action="referrals.listed",
        hospital_id=caller.org_id if caller.role == "hospital" else None,
        reads=[(r.id, r.resident_id) for r in rows[:limit]],
        detail={"via": "api"},
    )
    return items, following
