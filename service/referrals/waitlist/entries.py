"""Putting a signed resident on a hospital's waiting list, listing and withdrawing entries.

An entry is checked as a booking is (R7–R10, R13, R14), through the booking's own guards: the
same reads, the same advisory locks and the same counts, in which entries now count too
(``referrals/guards.py``), so a waiting list cannot be used to hoard (docs/waitlist.md).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record, record_read
from service.identity.suspensions import refusal, suspension_in_force
from service.kit.clock import local_date
from service.kit.context import Actor, Caller
from service.kit.crypto import Crypto, mask_id_number, mask_name
from service.kit.dberrors import constraint_name
from service.kit.errors import Conflict, Forbidden, NotFound, Unprocessable
from service.models.referrals import Referral
from service.models.registry import Alliance, AllianceMember, Department, Doctor, Organisation
from service.models.residents import Resident
from service.models.supervision import AccessSuspension
from service.models.waitlist import ENTRY_RESIDENT_NAME, WaitlistEntry, WaitlistOffer
from service.policy.scope import scope_admits
from service.policy.service import policy_in_force
from service.referrals.booking import new_reference, resident_under_contract
from service.referrals.guards import (
    BookingSubject,
    enforce_booking_limits,
    lock_for_booking,
    refuse_if_barred,
    standing,
)
from service.referrals.schemas import NamedRef
from service.referrals.waitlist.offers import withdraw_pending_offer
from service.referrals.waitlist.schemas import EntryIn, EntryOut
from service.residents.idnumber import InvalidIdNumber, normalise_id_number


def _entry_exists() -> Conflict:
    return Conflict(
        "waitlist_entry_exists",
        "The resident is already waiting for this hospital's department; withdraw that entry first.",
    )


async def create_entry(
    *, session: AsyncSession, actor: Actor, caller: Caller, crypto: Crypto, entry: EntryIn
) -> EntryOut:
    """Put a signed resident on the waiting list, checked as a booking of that department is."""
    now = actor.now
    today = local_date(now)
    found = (
        await session.execute(
            select(Doctor, Organisation, suspension_in_force("doctor", Doctor.id, now))
            .join(Organisation, Organisation.id == Doctor.organisation_id)
            .where(Doctor.organisation_id == caller.org_id, Doctor.code == entry.referring_doctor_code)
        )
    ).first()
    if found is None:
        raise Unprocessable(
            "referring_doctor_unknown", "The referring doctor is not a doctor of the calling institution."
        )
    doctor, booker, suspension_id = found
    if suspension_id is not None:
        suspension = await session.get(AccessSuspension, suspension_id)
        assert suspension is not None
        raise refusal(suspension)
    try:
        id_number = normalise_id_number(entry.resident.id_number, today=today)
    except InvalidIdNumber as exc:
        raise Unprocessable("invalid_id_number", str(exc), reason=exc.reason) from None
    if entry.from_date < today:
        raise Unprocessable("waitlist_range_past", "The entry's dates start before today.")
    hospital = await session.get(Organisation, entry.hospital_id)
    department = await session.get(Department, entry.department_id)
    if hospital is None or hospital.kind != "hospital":
        raise NotFound("hospital_not_found", f"No hospital {entry.hospital_id}.")
    if department is None or department.hospital_id != hospital.id:
        raise NotFound("department_not_found", f"No department {entry.department_id} at this hospital.")
    policy = await policy_in_force(
        session=session, hospital_id=hospital.id, on=entry.from_date, kind=entry.resource_kind
    )
    in_alliance = (
        await session.scalar(
            select(AllianceMember.alliance_id)
            .join(Alliance, Alliance.id == AllianceMember.alliance_id)
            .where(AllianceMember.organisation_id == booker.id, Alliance.lead_hospital_id == hospital.id)
            .limit(1)
        )
        is not None
    )
    if booker.kind != "primary" or not scope_admits(policy.scope, hospital, booker, in_alliance):
        raise Forbidden(
            "out_of_scope",
            "This hospital's waiting list is open to the primary institutions its pool admits (R7).",
            hospital_id=hospital.id,
        )
    if entry.urgent and not policy.waitlist_urgent_priority:
        raise Unprocessable(
            "urgent_priority_not_allowed", "This hospital's policy gives urgent entries no priority."
        )
    name = entry.resident.name.strip()
    resident, declared = await resident_under_contract(
        session, crypto, id_number=id_number, doctor_id=doctor.id, institution_id=booker.id, today=today
    )
    if resident is None or not declared:
        raise Unprocessable(
            "not_signed", "The resident has no family-doctor contract in force with this doctor (R8)."
        )
    if name not in declared:
        raise Unprocessable(
            "name_mismatch",
            "The name does not match the name declared on your contract with this resident (R8).",
        )
    subject = BookingSubject(
        doctor_id=doctor.id,
        institution_id=booker.id,
        hospital_id=hospital.id,
        department_id=department.id,
        resource_kind=entry.resource_kind,
        service_date=entry.from_date,
        resident_id=resident.id,
    )
    await lock_for_booking(session, policy=policy, subject=subject)
    standing_now = await standing(session, policy=policy, subject=subject, now=now)
    refuse_if_barred(standing_now)
    encountered = entry.consultation.encountered_at
    if encountered > now or now - encountered > timedelta(hours=policy.consultation_max_age_hours):
        raise Unprocessable(
            "consultation_out_of_window",
            f"The consultation must be within the last {policy.consultation_max_age_hours} hours (R9).",
        )
    if not any(d.startswith(tuple(policy.disease_prefixes)) for d in entry.diagnoses):
        raise Unprocessable(
            "disease_not_covered",
            "No diagnosis is on this hospital's referral disease list (R10).",
            allowed_prefixes=policy.disease_prefixes,
        )
    await enforce_booking_limits(
        session, policy=policy, subject=subject, found=standing_now, now=now, holds_slot=False
    )
    try:
        row = await session.scalar(
            insert(WaitlistEntry)
            .values(
                reference=new_reference("W", entry.from_date),
                hospital_id=hospital.id,
                department_id=department.id,
                resource_kind=entry.resource_kind,
                modality=entry.modality,
                ward_code=entry.ward_code,
                from_date=entry.from_date,
                to_date=entry.to_date,
                resident_id=resident.id,
                resident_name_enc=crypto.encrypt(name, column=ENTRY_RESIDENT_NAME),
                booker_org_id=booker.id,
                referring_doctor_id=doctor.id,
                created_by_client_id=caller.client_id,
                policy_id=policy.id,
                encounter_id=entry.consultation.encounter_id,
                encountered_at=encountered,
                diagnoses=list(entry.diagnoses),
                urgent=entry.urgent,
                urgent_reason=entry.urgent_reason,
                status="waiting",
                created_at=now,
            )
            .returning(WaitlistEntry)
        )
    except IntegrityError as exc:
        if constraint_name(exc) == "uq_waitlist_entries_waiting_resident_department":
            raise _entry_exists() from exc
        raise
    assert row is not None
    await record(
        session=session,
        actor=actor,
        action="waitlist.entered",
        hospital_id=hospital.id,
        resident_id=resident.id,
        reason=entry.urgent_reason,
        detail={
            "entry": row.reference,
            "department_id": department.id,
            "from_date": entry.from_date.isoformat(),
            "to_date": entry.to_date.isoformat(),
            "urgent": entry.urgent,
        },
    )
    return _out(row, hospital, department, doctor, name, id_number, None, None)


def _out(
    entry: WaitlistEntry,
    hospital: Organisation,
    department: Department,
    doctor: Doctor,
    name: str,
    id_number: str,
    pending_offer: str | None,
    referral_reference: str | None,
) -> EntryOut:
    return EntryOut(
        reference=entry.reference,
        status=entry.status,
        hospital=NamedRef(id=hospital.id, code=hospital.code, name=hospital.name),
        department=NamedRef(id=department.id, code=department.code, name=department.name),
        resource_kind=entry.resource_kind,
        modality=entry.modality,
        ward_code=entry.ward_code,
        from_date=entry.from_date,
        to_date=entry.to_date,
        resident_name_masked=mask_name(name),
        resident_id_masked=mask_id_number(id_number),
        referring_doctor_code=doctor.code,
        urgent=entry.urgent,
        urgent_reason=entry.urgent_reason,
        created_at=entry.created_at,
        closed_at=entry.closed_at,
        pending_offer=pending_offer,
        referral_reference=referral_reference,
    )


async def _outs(session: AsyncSession, crypto: Crypto, entries: list[WaitlistEntry]) -> list[EntryOut]:
    """The entries as the API shows them, in one statement however many."""
    if not entries:
        return []
    rows = {
        row[0]: row[1:]
        for row in (
            await session.execute(
                select(
                    WaitlistEntry.id,
                    Organisation,
                    Department,
                    Doctor,
                    Resident.id_number_enc,
                    select(WaitlistOffer.reference)
                    .where(WaitlistOffer.entry_id == WaitlistEntry.id, WaitlistOffer.status == "pending")
                    .scalar_subquery(),
                    select(Referral.reference)
                    .where(Referral.id == WaitlistEntry.referral_id)
                    .scalar_subquery(),
                )
                .join(Organisation, Organisation.id == WaitlistEntry.hospital_id)
                .join(Department, Department.id == WaitlistEntry.department_id)
                .join(Doctor, Doctor.id == WaitlistEntry.referring_doctor_id)
                .join(Resident, Resident.id == WaitlistEntry.resident_id)
                .where(WaitlistEntry.id.in_([e.id for e in entries]))
            )
        ).all()
    }
    out = []
    for entry in entries:
        hospital, department, doctor, id_enc, offer, referral = rows[entry.id]
        out.append(
            _out(
                entry,
                hospital,
                department,
                doctor,
                crypto.decrypt(entry.resident_name_enc, column=ENTRY_RESIDENT_NAME),
                crypto.decrypt(id_enc, column="residents.id_number"),
                offer,
                referral,
            )
        )
    return out


async def list_entries(
    *, session: AsyncSession, actor: Actor, caller: Caller, crypto: Crypto, status: str | None, limit: int
) -> list[EntryOut]:
    """The caller's own entries, newest first; the read is recorded (R15)."""
    query = select(WaitlistEntry).where(WaitlistEntry.booker_org_id == caller.org_id)
    if status is not None:
        query = query.where(WaitlistEntry.status == status)
    entries = list(
        await session.scalars(
            query.order_by(WaitlistEntry.created_at.desc(), WaitlistEntry.id.desc()).limit(limit)
        )
    )
    outs = await _outs(session, crypto, entries)
    await record_read(
        session=session,
        actor=actor,
        action="waitlist.entries_listed",
        reads=[(None, e.resident_id) for e in entries],
        detail={"via": "api"},
    )
    return outs


async def withdraw_entry(
    *, session: AsyncSession, actor: Actor, caller: Caller, crypto: Crypto, reference: str, reason: str
) -> EntryOut:
    """The family doctor takes the resident off the list; an offer it holds passes on."""
    entry = await session.scalar(
        select(WaitlistEntry).where(WaitlistEntry.reference == reference).with_for_update()
    )
    if entry is None or entry.booker_org_id != caller.org_id:
        raise NotFound("waitlist_entry_not_found", f"No waiting-list entry {reference} of yours.")
    if entry.status != "waiting":
        raise Conflict("waitlist_entry_closed", f"The entry is {entry.status}.", entry_status=entry.status)
    entry.status = "withdrawn"
    entry.closed_at = actor.now
    await session.flush()
    await withdraw_pending_offer(session=session, actor=actor, crypto=crypto, entry=entry)
    await record(
        session=session,
        actor=actor,
        action="waitlist.withdrawn",
        hospital_id=entry.hospital_id,
        resident_id=entry.resident_id,
        reason=reason,
        detail={"entry": entry.reference},
    )
    [out] = await _outs(session, crypto, [entry])
    return out
