"""Offering freed slots to the waiting list, and the family doctor's answer (docs/waitlist.md).

A slot freed by a cancellation while its pool window is open is offered, in the cancellation's
own transaction, to the first eligible entry in line: the slot is claimed from ``reserved`` to
``offered`` by one conditional UPDATE (the booking's claim pattern), so no booking can take it
while the offer is pending. An offer that is declined, withdrawn or expires passes to the next
in line in the same transaction; the offer loop expires offers one per transaction with
``SKIP LOCKED``, so any number of replicas can run it. At ``public_at`` the release returns an
offered slot like a reserved one and its offer lapses in the same statement (slots/release.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import structlog
from sqlalchemy import and_, exists, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from service.audit.service import record, record_read
from service.kit.clock import Clock, local_date
from service.kit.context import Actor, Caller
from service.kit.crypto import Crypto, mask_name
from service.kit.db import Database
from service.kit.errors import Conflict, NotFound
from service.kit.periodic import every
from service.models.attendance import NoShowBar
from service.models.policy import Policy
from service.models.referrals import Referral
from service.models.registry import Department, Doctor, Organisation
from service.models.residents import FamilyDoctorContract, Resident
from service.models.slots import ClinicSession, Slot
from service.models.waitlist import ENTRY_RESIDENT_NAME, WaitlistEntry, WaitlistOffer
from service.policy.service import policies_in_force
from service.referrals.booking import HeldOffer, book_referral, new_reference
from service.referrals.schemas import BookingIn, Consultation, NamedRef, ReferralOut, ResidentRef, SlotOut
from service.referrals.waitlist.events import emit_offer_event, offer_event_data
from service.referrals.waitlist.schemas import OfferOut

log = structlog.get_logger("slotpool.waitlist")


def _eligible_line(
    slot: Slot, cs: ClinicSession, policy: Policy, now: datetime, skip: Sequence[int] = ()
) -> Any:
    """The first eligible entry for ``slot``, locked, skipping entries another offer holds
    (and the entries in ``skip``).

    Eligible is what a booking of this slot would check and the database can tell at once: the
    entry waits for this department (modality, ward) and day; its resident has a contract in force
    with its family doctor and institution (R8), no bar at this hospital (R13), no referral to this
    department that day; a diagnosis is on this slot's policy list (R10); it holds no other offer
    and was not offered this slot before. The consultation was checked (R9) when the entry was made.
    The accept re-checks every rule through the booking itself.
    """
    today = local_date(now)
    e = WaitlistEntry
    covered = text(
        "EXISTS (SELECT 1 FROM unnest(waitlist_entries.diagnoses) AS d, "
        "unnest(CAST(:waitlist_prefixes AS text[])) AS p WHERE starts_with(d, p))"
    ).bindparams(waitlist_prefixes=list(policy.disease_prefixes))
    order: list[Any] = [e.created_at, e.id]
    if policy.waitlist_urgent_priority:
        order.insert(0, e.urgent.desc())
    return (
        select(e)
        .where(
            e.status == "waiting",
            e.hospital_id == slot.hospital_id,
            e.department_id == cs.department_id,
            e.resource_kind == cs.resource_kind,
            or_(e.modality.is_(None), e.modality == cs.modality),
            or_(e.ward_code.is_(None), e.ward_code == cs.ward_code),
            e.from_date <= cs.service_date,
            e.to_date >= cs.service_date,
            e.to_date >= today,
            ~exists().where(WaitlistOffer.entry_id == e.id, WaitlistOffer.status == "pending"),
            ~exists().where(WaitlistOffer.entry_id == e.id, WaitlistOffer.slot_id == slot.id),
            exists().where(
                FamilyDoctorContract.resident_id == e.resident_id,
                FamilyDoctorContract.family_doctor_id == e.referring_doctor_id,
                FamilyDoctorContract.institution_id == e.booker_org_id,
                FamilyDoctorContract.starts_on <= today,
                FamilyDoctorContract.ends_on >= today,
            ),
            ~exists().where(
                NoShowBar.hospital_id == e.hospital_id,
                NoShowBar.resident_id == e.resident_id,
                NoShowBar.lifted_at.is_(None),
                NoShowBar.starts_on <= today,
                NoShowBar.ends_on >= today,
            ),
            ~exists().where(
                Referral.resident_id == e.resident_id,
                Referral.department_id == cs.department_id,
                Referral.service_date == cs.service_date,
                Referral.status == "booked",
            ),
            covered,
            *([e.id.not_in(skip)] if skip else []),
        )
        .order_by(*order)
        .limit(1)
        .with_for_update(skip_locked=True)
    )


async def _first_in_line(
    session: AsyncSession, slot: Slot, cs: ClinicSession, policy: Policy, now: datetime
) -> WaitlistEntry | None:
    """The first eligible entry, locked, that holds no offer now and was never offered ``slot``.

    The line's ``NOT EXISTS`` on offers is read with the statement's snapshot, taken before the
    entry's lock is granted. Two cancellations at once: the first offers its slot to entry E and
    commits (an insert into ``waitlist_offers``; E's own row is not changed, so PostgreSQL does not
    re-check the line when the second locks E after that commit). The second's snapshot predates
    the commit, so it saw E without an offer and would offer E a second slot: the partial unique
    index refuses it and the cancellation itself failed (500). So the offers are read again once
    the entry is ours (a new statement, a new snapshot, after the other commit), and an entry found
    holding one is skipped for the next in line.
    """
    skipped: list[int] = []
    while True:
        entry: WaitlistEntry | None = await session.scalar(_eligible_line(slot, cs, policy, now, skipped))
        if entry is None:
            return None
        taken = await session.scalar(
            select(
                exists().where(
                    WaitlistOffer.entry_id == entry.id,
                    or_(WaitlistOffer.status == "pending", WaitlistOffer.slot_id == slot.id),
                )
            )
        )
        if not taken:
            return entry
        skipped.append(entry.id)


async def offer_freed_slot(
    *, session: AsyncSession, actor: Actor, crypto: Crypto, slot: Slot
) -> WaitlistOffer | None:
    """Offer ``slot``, just freed in its pool window, to the first eligible entry in line.

    The caller holds the slot's row lock or has just changed it; nothing happens if the slot is
    not ``reserved`` with its window open, or nobody eligible waits.
    """
    now = actor.now
    if slot.status != "reserved" or not (slot.pool_opens_at <= now < slot.public_at):
        return None
    cs = await session.get(ClinicSession, slot.session_id)
    assert cs is not None
    wanted = (cs.resource_kind, cs.service_date)
    policy = (await policies_in_force(session=session, hospital_id=cs.hospital_id, wanted={wanted}))[wanted]
    if policy is None:
        return None
    entry = await _first_in_line(session, slot, cs, policy, now)
    if entry is None:
        return None
    claimed = await session.scalar(
        update(Slot)
        .where(Slot.id == slot.id, Slot.status == "reserved", Slot.pool_opens_at <= now, Slot.public_at > now)
        .values(status="offered")
        .returning(Slot.id)
        .execution_options(synchronize_session=False)
    )
    if claimed is None:
        return None
    set_committed_value(slot, "status", "offered")
    # Held for the policy's minutes, never past the public release (R6): at public_at it lapses.
    expires_at = min(now + timedelta(minutes=policy.waitlist_offer_hold_minutes), slot.public_at)
    offer = WaitlistOffer(
        reference=new_reference("O", cs.service_date),
        entry_id=entry.id,
        slot_id=slot.id,
        hospital_id=slot.hospital_id,
        booker_org_id=entry.booker_org_id,
        status="pending",
        offered_at=now,
        expires_at=expires_at,
    )
    session.add(offer)
    await session.flush()
    hospital = await session.get(Organisation, slot.hospital_id)
    department = await session.get(Department, cs.department_id)
    assert hospital is not None and department is not None
    name = crypto.decrypt(entry.resident_name_enc, column=ENTRY_RESIDENT_NAME)
    await emit_offer_event(
        session=session,
        booker_org_id=entry.booker_org_id,
        hospital_id=slot.hospital_id,
        data=offer_event_data(
            offer=offer,
            entry=entry,
            slot=slot,
            clinic_session=cs,
            hospital=hospital,
            department=department,
            resident_name_masked=mask_name(name),
        ),
        at=now,
    )
    await record(
        session=session,
        actor=actor,
        action="waitlist.offered",
        hospital_id=slot.hospital_id,
        resident_id=entry.resident_id,
        detail={
            "offer": offer.reference,
            "entry": entry.reference,
            "slot_id": slot.id,
            "expires_at": expires_at.isoformat(),
            "urgent": entry.urgent,
        },
    )
    return offer


async def _pass_on(
    session: AsyncSession, actor: Actor, crypto: Crypto, offer: WaitlistOffer, *, status: str
) -> WaitlistOffer | None:
    """Close a pending offer as ``status``, free its slot and offer it to the next in line."""
    offer.status = status
    offer.closed_at = actor.now
    await session.flush()
    slot = await session.scalar(
        select(Slot)
        .where(Slot.id == offer.slot_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert slot is not None
    if slot.status != "offered":
        return None
    slot.status = "reserved"
    await session.flush()
    return await offer_freed_slot(session=session, actor=actor, crypto=crypto, slot=slot)


async def withdraw_offers_for_session(
    *, session: AsyncSession, actor: Actor, clinic_session: ClinicSession
) -> None:
    """停诊: the session's pending offers end with it; its slots are withdrawn by the caller."""
    withdrawn = list(
        await session.scalars(
            update(WaitlistOffer)
            .where(
                WaitlistOffer.status == "pending",
                WaitlistOffer.slot_id.in_(select(Slot.id).where(Slot.session_id == clinic_session.id)),
            )
            .values(status="withdrawn", closed_at=actor.now)
            .returning(WaitlistOffer.reference)
            .execution_options(synchronize_session=False)
        )
    )
    if withdrawn:
        await record(
            session=session,
            actor=actor,
            action="waitlist.offers_withdrawn",
            hospital_id=clinic_session.hospital_id,
            reason="The hospital withdrew the session.",
            detail={"offers": sorted(withdrawn)},
        )


# --- the family doctor's side ---------------------------------------------------------------


async def _own_offer(session: AsyncSession, caller: Caller, reference: str) -> WaitlistOffer:
    offer = await session.scalar(
        select(WaitlistOffer)
        .where(WaitlistOffer.reference == reference)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if offer is None or offer.booker_org_id != caller.org_id:
        raise NotFound("offer_not_found", f"No offer {reference} of yours.")
    return offer


def _closed(offer: WaitlistOffer, now: datetime) -> Conflict | None:
    if offer.status != "pending":
        return Conflict("offer_closed", f"The offer is {offer.status}.", offer_status=offer.status)
    if offer.expires_at <= now:
        return Conflict("offer_closed", "The offer has expired.", offer_status="expired")
    return None


async def accept_offer(
    *, session: AsyncSession, actor: Actor, caller: Caller, crypto: Crypto, reference: str
) -> ReferralOut:
    """The offer becomes a referral: the booking itself, every rule re-checked, on the held slot.

    The entry is locked before its offer, in the order a withdrawal locks them.
    """
    found = await session.scalar(select(WaitlistOffer).where(WaitlistOffer.reference == reference))
    if found is None or found.booker_org_id != caller.org_id:
        raise NotFound("offer_not_found", f"No offer {reference} of yours.")
    entry = await session.scalar(
        select(WaitlistEntry).where(WaitlistEntry.id == found.entry_id).with_for_update()
    )
    assert entry is not None
    offer = await _own_offer(session, caller, reference)
    problem = _closed(offer, actor.now)
    if problem is not None:
        raise problem
    resident = await session.get(Resident, entry.resident_id)
    doctor = await session.get(Doctor, entry.referring_doctor_id)
    assert resident is not None and doctor is not None
    booking = BookingIn(
        slot_id=offer.slot_id,
        referring_doctor_code=doctor.code,
        resident=ResidentRef(
            id_number=crypto.decrypt(resident.id_number_enc, column="residents.id_number"),
            name=crypto.decrypt(entry.resident_name_enc, column=ENTRY_RESIDENT_NAME),
        ),
        consultation=Consultation(encounter_id=entry.encounter_id, encountered_at=entry.encountered_at),
        diagnoses=list(entry.diagnoses),
    )
    out = await book_referral(
        session=session,
        actor=actor,
        caller=caller,
        crypto=crypto,
        booking=booking,
        held=HeldOffer(entry_id=entry.id, entered_at=entry.created_at),
    )
    referral_id = await session.scalar(select(Referral.id).where(Referral.reference == out.reference))
    offer.status = "accepted"
    offer.closed_at = actor.now
    offer.referral_id = referral_id
    entry.status = "booked"
    entry.closed_at = actor.now
    entry.referral_id = referral_id
    await session.flush()
    await record(
        session=session,
        actor=actor,
        action="waitlist.accepted",
        hospital_id=offer.hospital_id,
        resident_id=entry.resident_id,
        referral_id=referral_id,
        detail={"offer": offer.reference, "entry": entry.reference, "referral": out.reference},
    )
    return out


async def decline_offer(
    *, session: AsyncSession, actor: Actor, caller: Caller, crypto: Crypto, reference: str
) -> OfferOut:
    """The family doctor declines: the entry keeps its place for other slots; this one passes on."""
    offer = await _own_offer(session, caller, reference)
    problem = _closed(offer, actor.now)
    if problem is not None:
        raise problem
    entry = await session.get(WaitlistEntry, offer.entry_id)
    assert entry is not None
    await record(
        session=session,
        actor=actor,
        action="waitlist.declined",
        hospital_id=offer.hospital_id,
        resident_id=entry.resident_id,
        detail={"offer": offer.reference, "entry": entry.reference, "slot_id": offer.slot_id},
    )
    await _pass_on(session, actor, crypto, offer, status="declined")
    [out] = await offer_outs(session, crypto, [offer])
    return out


async def withdraw_pending_offer(
    *, session: AsyncSession, actor: Actor, crypto: Crypto, entry: WaitlistEntry
) -> None:
    """The entry is withdrawn: an offer it holds passes to the next in line."""
    offer = await session.scalar(
        select(WaitlistOffer)
        .where(WaitlistOffer.entry_id == entry.id, WaitlistOffer.status == "pending")
        .with_for_update()
    )
    if offer is not None:
        await _pass_on(session, actor, crypto, offer, status="withdrawn")


async def offer_outs(session: AsyncSession, crypto: Crypto, offers: list[WaitlistOffer]) -> list[OfferOut]:
    """The offers as the API shows them, in one statement however many."""
    if not offers:
        return []
    rows = {
        row[0]: row[1:]
        for row in (
            await session.execute(
                select(WaitlistOffer.id, WaitlistEntry, Slot, ClinicSession, Organisation, Department)
                .join(WaitlistEntry, WaitlistEntry.id == WaitlistOffer.entry_id)
                .join(Slot, Slot.id == WaitlistOffer.slot_id)
                .join(ClinicSession, ClinicSession.id == Slot.session_id)
                .join(Organisation, Organisation.id == WaitlistOffer.hospital_id)
                .join(Department, Department.id == ClinicSession.department_id)
                .where(WaitlistOffer.id.in_([o.id for o in offers]))
            )
        ).all()
    }
    out = []
    for offer in offers:
        entry, slot, cs, hospital, department = rows[offer.id]
        out.append(
            OfferOut(
                reference=offer.reference,
                status=offer.status,
                entry_reference=entry.reference,
                hospital=NamedRef(id=hospital.id, code=hospital.code, name=hospital.name),
                department=NamedRef(id=department.id, code=department.code, name=department.name),
                service_date=cs.service_date,
                slot=SlotOut(
                    id=slot.id,
                    number=slot.number,
                    external_id=slot.external_id,
                    starts_at=slot.starts_at,
                    ends_at=slot.ends_at,
                ),
                resident_name_masked=mask_name(
                    crypto.decrypt(entry.resident_name_enc, column=ENTRY_RESIDENT_NAME)
                ),
                offered_at=offer.offered_at,
                expires_at=offer.expires_at,
            )
        )
    return out


async def list_pending_offers(
    *, session: AsyncSession, actor: Actor, caller: Caller, crypto: Crypto
) -> list[OfferOut]:
    """The caller's offers still open to an answer, soonest to expire first."""
    offers = list(
        await session.scalars(
            select(WaitlistOffer)
            .where(
                WaitlistOffer.booker_org_id == caller.org_id,
                WaitlistOffer.status == "pending",
                WaitlistOffer.expires_at > actor.now,
            )
            .order_by(WaitlistOffer.expires_at, WaitlistOffer.id)
            .limit(500)
        )
    )
    outs = await offer_outs(session, crypto, offers)
    if offers:
        entries = {
            e.id: e.resident_id
            for e in await session.scalars(
                select(WaitlistEntry).where(WaitlistEntry.id.in_([o.entry_id for o in offers]))
            )
        }
        await record_read(
            session=session,
            actor=actor,
            action="waitlist.offers_listed",
            reads=[(None, entries[o.entry_id]) for o in offers],
            detail={"via": "api"},
        )
    return outs


# --- the offer loop -------------------------------------------------------------------------


async def expire_one_offer(session: AsyncSession, *, crypto: Crypto, now: datetime) -> bool:
    """Expire the pending offer that expired first, if any, and pass its slot on; one per transaction.

    ``SKIP LOCKED``: an offer being accepted, declined or expired by another replica is left to it.
    """
    # An offer whose slot has reached its public release is the release's to lapse, in its own
    # statement (slots/release.py): left alone here, the two never wait on each other's locks.
    offer = await session.scalar(
        select(WaitlistOffer)
        .join(Slot, Slot.id == WaitlistOffer.slot_id)
        .where(WaitlistOffer.status == "pending", WaitlistOffer.expires_at <= now, Slot.public_at > now)
        .order_by(WaitlistOffer.expires_at, WaitlistOffer.id)
        .limit(1)
        .with_for_update(of=WaitlistOffer, skip_locked=True)
    )
    if offer is None:
        return False
    actor = Actor.system("waitlist_loop", now=now)
    await record(
        session=session,
        actor=actor,
        action="waitlist.expired",
        hospital_id=offer.hospital_id,
        detail={"offer": offer.reference, "slot_id": offer.slot_id},
    )
    await _pass_on(session, actor, crypto, offer, status="expired")
    return True


async def expire_ended_entries(session: AsyncSession, *, now: datetime) -> int:
    """Entries whose date range is over leave the line (and the R14 counts)."""
    ended = list(
        await session.scalars(
            update(WaitlistEntry)
            .where(
                WaitlistEntry.status == "waiting",
                WaitlistEntry.to_date < local_date(now),
                ~exists().where(
                    and_(WaitlistOffer.entry_id == WaitlistEntry.id, WaitlistOffer.status == "pending")
                ),
            )
            .values(status="expired", closed_at=now)
            .returning(WaitlistEntry.reference)
            .execution_options(synchronize_session=False)
        )
    )
    if ended:
        await record(
            session=session,
            actor=Actor.system("waitlist_loop", now=now),
            action="waitlist.entries_expired",
            reason="The entries' date ranges ended.",
            detail={"entries": sorted(ended)},
        )
    return len(ended)


async def run_waitlist_pass(db: Database, clock: Clock, crypto: Crypto) -> int:
    """Expire due offers one per transaction, each passing its slot on, then ended entries."""
    expired = 0
    while await db.run(partial(expire_one_offer, crypto=crypto, now=clock.now())):
        expired += 1
    await db.run(partial(expire_ended_entries, now=clock.now()))
    if expired:
        log.info("waiting-list offers expired", count=expired)
    return expired


async def waitlist_loop(
    db: Database, clock: Clock, crypto: Crypto, *, interval: float, stop: asyncio.Event
) -> None:
    """Run ``run_waitlist_pass`` every ``interval`` seconds until ``stop`` is set."""
    await every(interval, partial(run_waitlist_pass, db, clock, crypto), name="waitlist", stop=stop)
