"""Cancelling a referral (R12): by the referring institution, the hotline, the commission (R14),
or the hospital when it withdraws a session."""

from __future__ import annotations

import hmac
import secrets
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.abuse.hotline import HotlineLimits, count_failure, lock_attempts, refusal_if_locked
from service.audit.service import record
from service.kit.clock import instant
from service.kit.context import Actor, Caller
from service.kit.crypto import Crypto
from service.kit.errors import Conflict, NotFound, Problem, Unprocessable
from service.kit.regions import covers
from service.models.referrals import Referral
from service.models.registry import Organisation
from service.models.slots import ClinicSession, Slot
from service.outbox.events import emit
from service.referrals.events import institution_referral_data, referral_event_data
from service.referrals.schemas import ReferralOut
from service.referrals.views import ReferralView, load_view
from service.referrals.waitlist.offers import offer_freed_slot, withdraw_offers_for_session
from service.slots.returns import release_slot


async def _cancel(
    session: AsyncSession,
    actor: Actor,
    crypto: Crypto,
    referral: Referral,
    *,
    by: str,
    reason: str,
    enforce_cutoff: bool,
    keep_slot: bool = False,
) -> ReferralView:
    """Cancel one referral; its slot goes back to the pool or the public unless the caller keeps it."""
    now = actor.now
    if referral.status != "booked":
        raise Conflict("already_cancelled", "The referral is already cancelled.")
    slot = await session.scalar(select(Slot).where(Slot.id == referral.slot_id).with_for_update())
    assert slot is not None
    view = await load_view(session, crypto, referral)
    if enforce_cutoff:
        policy = view.policy
        deadline = view.cancel_deadline
        if now > deadline:
            raise Conflict(
                "cancellation_closed",
                f"Cancellation closes {policy.cancel_cutoff_minutes} minutes before the slot (R12).",
                deadline=instant(deadline),
            )
    referral.status = "cancelled"
    referral.cancelled_at = now
    referral.cancelled_by = by
    referral.cancelled_by_client_id = actor.client_id
    referral.cancel_reason = reason
    returned_to = None if keep_slot else await release_slot(session, slot, now)
    await session.flush()
    if returned_to == "pool":
        # Freed in its pool window: held at once for the first eligible resident on the waiting
        # list, in this transaction, so no booking can slip in between (docs/waitlist.md).
        await offer_freed_slot(session=session, actor=actor, crypto=crypto, slot=slot)
    data = referral_event_data(view)
    data["cancellation"] = {"by": by, "reason": reason, "slot_returned_to": returned_to}
    # The booker institution is told too, whoever cancelled, in its own payload: the same
    # statement writes both events (docs/webhooks.md, "Events for primary institutions").
    told = institution_referral_data(view)
    told["cancellation"] = {"by": by, "reason": reason}
    await emit(
        session=session,
        hospital_id=referral.hospital_id,
        event_type="referral.cancelled",
        data=data,
        at=now,
        institution_id=referral.booker_org_id,
        institution_data=told,
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
    return view


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
    view = await _cancel(
        session, actor, crypto, referral, by="family_doctor", reason=reason, enforce_cutoff=True
    )
    return view.out(show_code=False)


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
    view = await _cancel(session, actor, crypto, referral, by="hotline", reason=reason, enforce_cutoff=True)
    return view.out(show_code=False)


def _iso(until: datetime | None, now: datetime) -> str | None:
    return instant(until) if until is not None and until > now else None


async def cancel_by_commission(
    *, session: AsyncSession, actor: Actor, crypto: Crypto, referral: Referral, reason: str
) -> None:
    """The commission cancels a referral of a party whose access it suspends or revokes (R14)."""
    await _cancel(session, actor, crypto, referral, by="commission", reason=reason, enforce_cutoff=False)


async def cancel_for_withdrawal(
    *,
    session: AsyncSession,
    actor: Actor,
    crypto: Crypto,
    clinic_session: ClinicSession,
    reason: str,
) -> None:
    """停诊: cancel every active referral of the session, keeping its slots for the caller to withdraw.

    The slots package calls this when a hospital withdraws or removes a session: the one place
    where slots reach up into referrals.
    """
    referrals = await session.scalars(
        select(Referral)
        .where(Referral.session_id == clinic_session.id, Referral.status == "booked")
        .order_by(Referral.id)
        .with_for_update()
    )
    await withdraw_offers_for_session(session=session, actor=actor, clinic_session=clinic_session)
    for referral in referrals:
        await _cancel(
            session,
            actor,
            crypto,
            referral,
            by="hospital",
            reason=reason,
            enforce_cutoff=False,
            keep_slot=True,
        )
