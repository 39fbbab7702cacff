"""Booking one reserved slot for one resident (R5–R11, R13, R14): every rule in one transaction."""

from __future__ import annotations

import secrets
from datetime import date, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.identity.suspensions import refuse_if_suspended
from service.kit.clock import local_date
from service.kit.context import Actor, Caller
from service.kit.crypto import Crypto
from service.kit.dberrors import constraint_name
from service.kit.errors import Conflict, Forbidden, NotFound, Problem, Unprocessable
from service.models.referrals import REFERRAL_RESIDENT_NAME, Referral
from service.models.registry import Doctor, Organisation
from service.models.residents import CONTRACT_NAME, FamilyDoctorContract, Resident
from service.models.slots import ClinicSession, Slot
from service.outbox.events import emit
from service.policy.scope import admits
from service.policy.service import policy_in_force
from service.referrals.events import referral_event_data
from service.referrals.guards import enforce_booking_limits, refuse_if_barred
from service.referrals.schemas import BookingIn, ReferralOut
from service.referrals.views import load_view
from service.residents.idnumber import InvalidIdNumber, normalise_id_number

REFERENCE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


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
) -> ReferralOut:
    """Book one reserved slot for one resident; every rule is checked in this transaction."""
    now = actor.now
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
    view = await load_view(session, crypto, referral)
    await emit(
        session=session,
        hospital_id=hospital.id,
        event_type="referral.booked",
        data=referral_event_data(view),
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
    return view.out(show_code=True)


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
    """A refusal that reached the rules, recorded after the booking's savepoint rolled back."""
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
