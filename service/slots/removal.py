"""Removing a session pushed in error (a wrong date): its referrals cancelled as by a withdrawal."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.kit.context import Actor
from service.kit.crypto import Crypto
from service.kit.errors import NotFound
from service.kit.regions import covers
from service.models.referrals import Referral
from service.models.registry import Department, Organisation
from service.models.slots import ClinicSession, Slot
from service.slots.schemas import SessionRemoved
from service.slots.service import lock_department_day
from service.slots.shortfalls import forget_shortfalls
from service.slots.withdrawal import withdraw_session


async def remove_session(
    *,
    session: AsyncSession,
    actor: Actor,
    crypto: Crypto,
    session_id: int,
    hospital_id: int | None,
    region_code: str | None,
    reason: str,
) -> SessionRemoved:
    """Take a wrongly pushed session out of the pool: cancel its referrals, withdraw its slots, mark it removed.

    The hospital names its own sessions (``hospital_id``), the commission those of its region
    (``region_code``). The row stays, marked ``removed``: its cancelled referrals and the audit
    trail point at it, and every view leaves it out.
    """
    cs = await session.scalar(
        select(ClinicSession)
        .where(ClinicSession.id == session_id, ClinicSession.status != "removed")
        .with_for_update()
    )
    hospital = await session.get(Organisation, cs.hospital_id) if cs is not None else None
    visible = (
        cs is not None
        and hospital is not None
        and (hospital_id is None or cs.hospital_id == hospital_id)
        and (region_code is None or covers(region_code, hospital.region_code))
    )
    if not visible or cs is None:
        raise NotFound("session_not_found", f"No session {session_id} you may remove.")
    await lock_department_day(session, cs.department_id, cs.service_date)
    dept = await session.get(Department, cs.department_id)
    assert dept is not None
    slot_counts = (
        await session.execute(
            select(Slot.status, func.count()).where(Slot.session_id == cs.id).group_by(Slot.status)
        )
    ).all()
    references = list(
        await session.scalars(
            select(Referral.reference)
            .where(Referral.session_id == cs.id, Referral.status == "booked")
            .order_by(Referral.id)
        )
    )
    before = {
        "external_id": cs.external_id,
        "version": cs.version,
        "status": cs.status,
        "department_code": dept.code,
        "resource_kind": cs.resource_kind,
        "service_date": cs.service_date.isoformat(),
        "period": cs.period,
        "slots": dict(slot_counts),
        "booked_referrals": references,
    }
    # The referrals go through the withdrawal's cancellation: the same events, notices and counts.
    # Their ``by`` stays ``hospital`` whoever removes: to the HIS and the patient the session is
    # gone, as after a 停诊 (the event contract ties a slot that no longer exists to ``hospital``).
    await withdraw_session(session=session, actor=actor, crypto=crypto, clinic_session=cs, reason=reason)
    cs.status = "removed"
    cs.withdrawn_reason = reason
    cs.updated_at = actor.now
    await session.flush()
    await forget_shortfalls(session, cs)
    await record(
        session=session,
        actor=actor,
        action="session.removed",
        hospital_id=cs.hospital_id,
        reason=reason,
        detail={"session_id": cs.id, "before": before, "cancelled_referrals": references},
    )
    return SessionRemoved(
        session_id=cs.id, external_id=cs.external_id, status="removed", cancelled_referrals=references
    )
