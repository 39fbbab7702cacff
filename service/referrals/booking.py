"""Booking one reserved slot for one resident (R5–R11, R13, R14): every rule in one transaction."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, cast

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.orm.attributes import set_committed_value

from service.audit.service import record
from service.identity.suspensions import refusal, suspension_in_force
from service.kit.clock import instant, local_date
from service.kit.context import Actor, Caller
from service.kit.crypto import Crypto, mask_id_number, mask_name
from service.kit.dberrors import constraint_name
from service.kit.errors import Conflict, Forbidden, NotFound, Problem, Unprocessable
from service.models.policy import HospitalPolicy, Policy
from service.models.referrals import REFERRAL_RESIDENT_NAME, Referral
from service.models.registry import Alliance, AllianceMember, Department, Doctor, Organisation
from service.models.residents import CONTRACT_NAME, FamilyDoctorContract, Resident
from service.models.slots import ClinicSession, Slot
from service.models.supervision import AccessSuspension
from service.outbox.events import emit
from service.policy.scope import scope_admits
from service.policy.service import no_policy
from service.referrals.events import referral_event_data
from service.referrals.guards import (
    BookingSubject,
    enforce_booking_limits,
    lock_for_booking,
    refuse_if_barred,
    standing,
)
from service.referrals.schemas import BookingIn, ReferralOut
from service.referrals.views import ReferralView, slip_id_masked
from service.residents.idnumber import InvalidIdNumber, normalise_id_number

REFERENCE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


@dataclass(frozen=True)
class HeldOffer:
    """A booking of a slot held for a waiting-list entry (docs/waitlist.md): it claims the slot
    from ``offered``, not ``reserved``; R9's window is measured from when the entry was made; the
    entry's own place in the limits passes to the referral."""

    entry_id: int
    entered_at: datetime


def new_reference(prefix: str, day: date) -> str:
    """A reference patients can read out on the phone: the prefix (R referral, W waiting-list
    entry, O offer), the day, six characters that cannot be confused with one another."""
    tail = "".join(secrets.choice(REFERENCE_ALPHABET) for _ in range(6))
    return f"{prefix}{day:%y%m%d}{tail}"


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
    held: HeldOffer | None = None,
) -> ReferralOut:
    """Book one reserved slot for one resident; every rule is checked in this transaction.

    Everything that can be decided before the slot is claimed is decided first, from a
    handful of reads that take no row lock: the doctor and any suspension of theirs, the
    slot with its session, hospital, department, doctor, policy and the booker's alliance
    tie, the resident with their contracts, then (under the limits' advisory locks) the bar,
    a duplicate and the limits' counts. The claim comes last: one UPDATE that takes the
    slot's row lock only if the slot is still reserved and its window open, followed by the
    referral, its event and its audit entry. Contenders for one slot wait for that short
    tail only, not for each other's checks (docs/performance.md).
    """
    now = actor.now
    today = local_date(now)
    found = (
        await session.execute(
            select(Doctor, Organisation, suspension_in_force("doctor", Doctor.id, now))
            .join(Organisation, Organisation.id == Doctor.organisation_id)
            .where(Doctor.organisation_id == caller.org_id, Doctor.code == booking.referring_doctor_code)
        )
    ).first()
    if found is None:
        raise Unprocessable(
            "referring_doctor_unknown",
            "The referring doctor is not a doctor of the calling institution.",
        )
    doctor, booker, suspension_id = found
    if suspension_id is not None:
        suspension = await session.get(AccessSuspension, suspension_id)
        assert suspension is not None
        raise refusal(suspension)
    try:
        id_number = normalise_id_number(booking.resident.id_number, today=today)
    except InvalidIdNumber as exc:
        raise Unprocessable("invalid_id_number", str(exc), reason=exc.reason) from None

    context = await _slot_context(session, slot_id=booking.slot_id, booker_id=booker.id)
    if context is None:
        raise NotFound("slot_not_found", f"No slot {booking.slot_id}.")
    slot, cs, hospital, department, session_doctor, policy, in_alliance = context
    if policy is None:
        raise no_policy(hospital.id, cs.resource_kind, cs.service_date)
    if not scope_admits(policy.scope, hospital, booker, in_alliance):
        raise Forbidden(
            "out_of_scope",
            f"This hospital's pool is open to {policy.scope.replace('_', ' ')} bookers only (R7).",
            hospital_id=hospital.id,
        )
    # Read without a lock: a slot already taken or out of its window is refused at once; the
    # claim below decides again, atomically.
    _check_slot_window(slot, now, held=held is not None)

    name = booking.resident.name.strip()
    if booker.kind == "primary":
        resident, declared = await resident_under_contract(
            session, crypto, id_number=id_number, doctor_id=doctor.id, institution_id=booker.id, today=today
        )
        if resident is None or not declared:
            raise Unprocessable(
                "not_signed",
                "The resident has no family-doctor contract in force with this doctor (R8).",
            )
    else:
        resident = await _ensure_resident(session, crypto, actor, id_number, name)
        declared = await _names_on_record(session, crypto, resident, today)
    if name not in declared:
        raise Unprocessable(
            "name_mismatch",
            "The name does not match the name declared on your contract with this resident (R8)."
            if booker.kind == "primary"
            else "The name does not match the resident's name on record (R8).",
        )

    subject = BookingSubject(
        doctor_id=doctor.id,
        institution_id=booker.id,
        hospital_id=hospital.id,
        department_id=cs.department_id,
        resource_kind=cs.resource_kind,
        service_date=cs.service_date,
        resident_id=resident.id,
        accepting_entry_id=held.entry_id if held is not None else 0,
    )
    await lock_for_booking(session, policy=policy, subject=subject)
    standing_now = await standing(session, policy=policy, subject=subject, now=now)
    refuse_if_barred(standing_now)
    encountered = booking.consultation.encountered_at
    # A waiting resident's consultation was in its window when they joined the line; the wait
    # is not theirs to answer for (docs/waitlist.md).
    consulted_by = held.entered_at if held is not None else now
    if encountered > now or consulted_by - encountered > timedelta(hours=policy.consultation_max_age_hours):
        raise Unprocessable(
            "consultation_out_of_window",
            f"The consultation must be within the last {policy.consultation_max_age_hours} hours (R9).",
        )
    if not any(d.startswith(tuple(policy.disease_prefixes)) for d in booking.diagnoses):
        raise Unprocessable(
            "disease_not_covered",
            "No diagnosis is on this hospital's referral disease list (R10).",
            allowed_prefixes=policy.disease_prefixes,
        )
    if standing_now.duplicate is not None:
        raise _duplicate_referral()
    await enforce_booking_limits(session, policy=policy, subject=subject, found=standing_now, now=now)

    await _claim(session, slot, now, held=held is not None)
    code = f"{secrets.randbelow(1_000_000):06d}"
    try:
        referral = await session.scalar(
            insert(Referral)
            .values(
                reference=new_reference("R", cs.service_date),
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
            .returning(Referral)
        )
    except IntegrityError as exc:
        # The database is the last word on both invariants, even if a check above raced;
        # the caller's savepoint rolls the claim back with it.
        if constraint_name(exc) == "uq_referrals_active_slot":
            raise Conflict("slot_taken", "The slot was booked by another request.") from exc
        if constraint_name(exc) == "uq_referrals_active_resident_department_day":
            raise _duplicate_referral() from exc
        raise
    assert referral is not None
    view = ReferralView(
        referral=referral,
        slot=slot,
        clinic_session=cs,
        hospital=hospital,
        department=department,
        booker=booker,
        referring_doctor=doctor,
        doctor=session_doctor,
        policy=policy,
        resident_name_masked=mask_name(name),
        resident_id_masked=mask_id_number(id_number),
        resident_id_slip_masked=slip_id_masked(id_number, policy),
        crypto=crypto,
    )
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


SlotContext = tuple[Slot, ClinicSession, Organisation, Department, Doctor | None, Policy | None, bool]


def _slot_context_statement() -> Any:
    """The slot and everything its booking is decided by, without a lock (see ``_slot_context``)."""
    hospital = aliased(Organisation, name="hospital")
    session_doctor = aliased(Doctor, name="session_doctor")
    policy_id = (
        select(Policy.id)
        .join(
            HospitalPolicy,
            (HospitalPolicy.policy_code == Policy.code)
            & (HospitalPolicy.resource_kind == Policy.resource_kind),
        )
        .where(
            HospitalPolicy.hospital_id == Slot.hospital_id,
            HospitalPolicy.resource_kind == ClinicSession.resource_kind,
            Policy.effective_from <= ClinicSession.service_date,
        )
        .order_by(Policy.effective_from.desc(), Policy.version.desc())
        .limit(1)
        .scalar_subquery()
    )
    in_alliance = (
        select(AllianceMember.alliance_id)
        .join(Alliance, Alliance.id == AllianceMember.alliance_id)
        .where(
            AllianceMember.organisation_id == bindparam("booker_id"),
            Alliance.lead_hospital_id == Slot.hospital_id,
        )
        .exists()
    )
    return (
        select(Slot, ClinicSession, hospital, Department, session_doctor, Policy, in_alliance)
        .join(ClinicSession, ClinicSession.id == Slot.session_id)
        .join(hospital, hospital.id == Slot.hospital_id)
        .join(Department, Department.id == ClinicSession.department_id)
        .outerjoin(session_doctor, session_doctor.id == ClinicSession.doctor_id)
        .outerjoin(Policy, Policy.id == policy_id)
        .where(Slot.id == bindparam("slot_id"))
    )


# Built once: a booking's statements differ only in their parameters.
_SLOT_CONTEXT = _slot_context_statement()


async def _slot_context(session: AsyncSession, *, slot_id: int, booker_id: int) -> SlotContext | None:
    """The slot and everything its booking is decided by, in one statement, without a lock.

    The policy is the version in force on the service date for the slot's kind (as
    ``policy_in_force`` chooses it); ``in_alliance`` tells whether the booker belongs to an
    alliance the hospital leads.
    """
    row = (await session.execute(_SLOT_CONTEXT, {"slot_id": slot_id, "booker_id": booker_id})).first()
    return None if row is None else cast(SlotContext, tuple(row))


async def resident_under_contract(
    session: AsyncSession, crypto: Crypto, *, id_number: str, doctor_id: int, institution_id: int, today: date
) -> tuple[Resident | None, set[str]]:
    """The resident and the names declared on their contracts in force with this doctor and
    institution, in one statement.

    The booker answers to its own contract only: another institution's declaration neither
    vouches for nor refuses this name (docs/identity.md).
    """
    rows = (
        await session.execute(
            select(Resident, FamilyDoctorContract.name_enc)
            .outerjoin(
                FamilyDoctorContract,
                and_(
                    FamilyDoctorContract.resident_id == Resident.id,
                    FamilyDoctorContract.family_doctor_id == doctor_id,
                    FamilyDoctorContract.institution_id == institution_id,
                    FamilyDoctorContract.starts_on <= today,
                    FamilyDoctorContract.ends_on >= today,
                ),
            )
            .where(Resident.id_index == crypto.blind_index(id_number, purpose="resident_id"))
        )
    ).all()
    if not rows:
        return None, set()
    names = {crypto.decrypt(blob, column=CONTRACT_NAME) for _, blob in rows if blob is not None}
    return rows[0][0], names


async def _claim(session: AsyncSession, slot: Slot, now: datetime, *, held: bool = False) -> None:
    """Claim the slot: the booking's only row lock, taken last, held till commit.

    Under READ COMMITTED the UPDATE re-checks its condition on the row's latest version, so
    of several contenders exactly one claims; the others learn from a fresh read why not.
    """
    claimed = await session.scalar(
        update(Slot)
        .where(
            Slot.id == slot.id,
            # A slot held for a waiting-list offer is claimed from ``offered`` by its accept only.
            Slot.status == ("offered" if held else "reserved"),
            Slot.pool_opens_at <= now,
            Slot.public_at > now,
        )
        .values(status="booked")
        .returning(Slot.id)
        .execution_options(synchronize_session=False)
    )
    if claimed is None:
        await session.refresh(slot)
        _check_slot_window(slot, now, held=held)
        raise Conflict("slot_taken", "The slot was booked by another request.")
    set_committed_value(slot, "status", "booked")


def _duplicate_referral() -> Conflict:
    return Conflict(
        "duplicate_referral", "The resident already has an active referral to this department on this day."
    )


def _check_slot_window(slot: Slot, now: datetime, *, held: bool = False) -> None:
    """R5/R6: bookable through the pool only while pool_opens_at <= now < public_at.

    Slots start at or after public_at (push validation), so a bookable slot has not started.
    An ``offered`` slot is held for a waiting-list entry: taken for everyone but its accept.
    """
    if slot.status == "booked":
        raise Conflict("slot_taken", "The slot is already booked through the pool.")
    if slot.status == "offered" and not held:
        raise Conflict("slot_taken", "The slot is held for a resident on the waiting list.")
    if held and slot.status == "reserved":
        raise Conflict("offer_closed", "The slot is no longer held for this offer.")
    open_status = "offered" if held else "reserved"
    if slot.status == "returned" or (slot.status == open_status and now >= slot.public_at):
        raise Conflict(
            "window_closed",
            "The slot has returned to the public pool (R6).",
            public_at=instant(slot.public_at),
        )
    if slot.status != open_status:
        raise Conflict("slot_not_in_pool", "The slot is not reserved for the pool.")
    if now < slot.pool_opens_at:
        raise Conflict(
            "window_not_open",
            "The pool window for this slot has not opened yet (R5).",
            pool_opens_at=instant(slot.pool_opens_at),
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
