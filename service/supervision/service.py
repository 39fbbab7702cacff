"""The commission suspends, revokes and reinstates access (R14) and queries the audit trail (R15)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, literal_column, or_, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from service.audit.service import record
from service.identity.suspensions import in_force
from service.kit.clock import instant, local_date
from service.kit.context import Actor, Caller
from service.kit.crypto import Crypto, mask_id_number
from service.kit.dberrors import constraint_name
from service.kit.errors import Conflict, NotFound, Unprocessable
from service.kit.regions import covers, within
from service.models.audit import AuditEntry
from service.models.events import EventType
from service.models.referrals import Referral
from service.models.registry import ApiClient, Doctor, Organisation
from service.models.residents import Resident
from service.models.slots import Slot
from service.models.supervision import AccessSuspension
from service.outbox.events import emit
from service.referrals.cancellation import cancel_by_commission
from service.referrals.schemas import NamedRef
from service.residents.idnumber import InvalidIdNumber, normalise_id_number
from service.supervision.schemas import AuditEntryOut, SuspensionIn, SuspensionOut

# What a hospital reads in referral.cancelled and access.* events: the commission's own reason
# stays in the audit trail.
HOSPITAL_REASONS = {
    "suspended": "转诊方的平台访问权限已被卫生健康委暂停",
    "revoked": "转诊方的平台访问权限已被卫生健康委撤销",
    "reinstated": "转诊方的平台访问权限已被卫生健康委恢复",
}


# --- subjects --------------------------------------------------------------------------------


async def _resolve_subject(session: AsyncSession, body: SuspensionIn) -> tuple[int, Organisation, str]:
    """The subject's id, its organisation and a label, or 404 ``subject_not_found``."""
    org: Organisation | None = None
    subject_id: int | None = None
    label = ""
    if body.subject_type == "institution":
        org = await (
            session.get(Organisation, body.subject_id)
            if body.subject_id is not None
            else session.scalar(select(Organisation).where(Organisation.code == body.organisation_code))
        )
        if org is not None:
            subject_id, label = org.id, org.name
    elif body.subject_type == "doctor":
        stmt = select(Doctor, Organisation).join(Organisation, Organisation.id == Doctor.organisation_id)
        stmt = (
            stmt.where(Doctor.id == body.subject_id)
            if body.subject_id is not None
            else stmt.where(Organisation.code == body.organisation_code, Doctor.code == body.doctor_code)
        )
        row = (await session.execute(stmt)).first()
        if row is not None:
            doctor, org = row
            subject_id, label = doctor.id, f"{doctor.code} {doctor.name}"
    else:
        client_row = (
            await session.execute(
                select(ApiClient, Organisation)
                .join(Organisation, Organisation.id == ApiClient.organisation_id)
                .where(ApiClient.id == body.subject_id)
            )
        ).first()
        if client_row is not None:
            client, org = client_row
            subject_id, label = client.id, client.name
    if subject_id is None or org is None:
        raise NotFound("subject_not_found", f"No {body.subject_type.replace('_', ' ')} matches.")
    return subject_id, org, label


async def _label(session: AsyncSession, suspension: AccessSuspension) -> str:
    if suspension.subject_type == "doctor":
        doctor = await session.get(Doctor, suspension.subject_id)
        return f"{doctor.code} {doctor.name}" if doctor else ""
    if suspension.subject_type == "api_client":
        client = await session.get(ApiClient, suspension.subject_id)
        return client.name if client else ""
    org = await session.get(Organisation, suspension.subject_id)
    return org.name if org else ""


async def suspension_out(session: AsyncSession, suspension: AccessSuspension, now: datetime) -> SuspensionOut:
    org = await session.get(Organisation, suspension.organisation_id)
    assert org is not None
    return SuspensionOut(
        id=suspension.id,
        subject_type=suspension.subject_type,
        subject_id=suspension.subject_id,
        subject=await _label(session, suspension),
        organisation=NamedRef(id=org.id, code=org.code, name=org.name),
        mode=suspension.mode,
        reason=suspension.reason,
        until=suspension.until,
        in_force=suspension.reinstated_at is None and (suspension.until is None or suspension.until > now),
        created_at=suspension.created_at,
        created_by_client_id=suspension.created_by_client_id,
        cancelled_references=list(suspension.cancelled_references),
        reinstated_at=suspension.reinstated_at,
        reinstated_by_client_id=suspension.reinstated_by_client_id,
        reinstate_reason=suspension.reinstate_reason,
    )


def _already(suspension_id: int | None) -> Conflict:
    extra = {"suspension_id": suspension_id} if suspension_id is not None else {}
    return Conflict(
        "already_suspended",
        "An action is already in force against this subject; reinstate it first.",
        **extra,
    )


# --- suspending, revoking, reinstating ---------------------------------------------------------


async def suspend_access(
    *, session: AsyncSession, actor: Actor, caller: Caller, crypto: Crypto, body: SuspensionIn
) -> SuspensionOut:
    """Suspend or revoke a subject in the commission's region; optionally cancel its active referrals."""
    now = actor.now
    subject_id, org, label = await _resolve_subject(session, body)
    if not covers(caller.region_code, org.region_code):
        raise NotFound("subject_not_found", f"No {body.subject_type.replace('_', ' ')} in your region.")
    if org.id == caller.org_id:
        raise Unprocessable(
            "own_organisation", "A commission cannot suspend its own organisation or clients."
        )
    if body.until is not None and body.until <= now:
        raise Unprocessable("until_in_past", "A suspension must end in the future.")

    open_action = await session.scalar(
        select(AccessSuspension)
        .where(
            AccessSuspension.subject_type == body.subject_type,
            AccessSuspension.subject_id == subject_id,
            AccessSuspension.reinstated_at.is_(None),
        )
        .with_for_update()
    )
    before: dict[str, Any] | None = None
    if open_action is not None:
        if open_action.until is None or open_action.until > now:
            raise _already(open_action.id)
        before = {"suspension_id": open_action.id, "mode": open_action.mode, "lapsed": True}
        # A suspension that lapsed by itself is closed at its end, so the new action can open.
        open_action.reinstated_at = open_action.until
        open_action.reinstate_reason = "lapsed"
        await session.flush()

    suspension = AccessSuspension(
        subject_type=body.subject_type,
        subject_id=subject_id,
        organisation_id=org.id,
        mode=body.mode,
        reason=body.reason,
        until=body.until,
        created_at=now,
        created_by_client_id=caller.client_id,
        cancelled_references=[],
    )
    session.add(suspension)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:
        if constraint_name(exc) == "uq_access_suspensions_active_subject":
            raise _already(None) from exc
        raise

    active = await _active_referrals(session, now, subject_type=body.subject_type, subject_id=subject_id)
    await _tell_hospitals(
        session,
        now,
        "access.revoked",
        active,
        {
            "subject": await _subject_event_data(session, body.subject_type, subject_id, org),
            "mode": body.mode,
            "until": instant(body.until) if body.until else None,
            "reason": HOSPITAL_REASONS[body.mode],
            "cancel_active_referrals": body.cancel_active_referrals,
        },
    )
    cancelled: list[str] = []
    if body.cancel_active_referrals:
        for referral in active:
            await cancel_by_commission(
                session=session,
                actor=actor,
                crypto=crypto,
                referral=referral,
                reason=HOSPITAL_REASONS[body.mode],
            )
            cancelled.append(referral.reference)
        suspension.cancelled_references = cancelled
        await session.flush()
    await record(
        session=session,
        actor=actor,
        action=f"access.{body.mode}",
        reason=body.reason,
        detail={
            "suspension_id": suspension.id,
            "subject_type": body.subject_type,
            "subject_id": subject_id,
            "subject": label,
            "organisation_id": org.id,
            "until": instant(body.until) if body.until else None,
            "cancelled_references": cancelled,
            # Access before and after: refused from now on (the key itself is never recorded).
            "before": before,
            "after": {"mode": body.mode, "in_force": True},
        },
    )
    return await suspension_out(session, suspension, now)


async def _active_referrals(
    session: AsyncSession, now: datetime, *, subject_type: str, subject_id: int
) -> list[Referral]:
    """The subject's booked referrals whose slot has not started, locked, in booking order."""
    column = {
        "doctor": Referral.referring_doctor_id,
        "institution": Referral.booker_org_id,
        "api_client": Referral.booked_by_client_id,
    }[subject_type]
    referrals = await session.scalars(
        select(Referral)
        .join(Slot, Slot.id == Referral.slot_id)
        .where(column == subject_id, Referral.status == "booked", Slot.starts_at > now)
        .order_by(Referral.id)
        .with_for_update(of=Referral)
    )
    return list(referrals.all())


async def _subject_event_data(
    session: AsyncSession, subject_type: str, subject_id: int, org: Organisation
) -> dict[str, Any]:
    """Who lost or regained access, as a hospital knows them: codes and names, nothing personal."""
    doctor = await session.get(Doctor, subject_id) if subject_type == "doctor" else None
    client = await session.get(ApiClient, subject_id) if subject_type == "api_client" else None
    return {
        "type": subject_type,
        "institution": {"code": org.code, "name": org.name},
        "doctor": {"code": doctor.code, "name": doctor.name} if doctor else None,
        "api_client": client.name if client else None,
    }


async def _tell_hospitals(
    session: AsyncSession,
    now: datetime,
    event_type: EventType,
    active: list[Referral],
    data: dict[str, Any],
) -> None:
    """One event per hospital holding active referrals of the subject, listing its own; none elsewhere."""
    by_hospital: dict[int, list[str]] = {}
    for referral in active:
        by_hospital.setdefault(referral.hospital_id, []).append(referral.reference)
    for hospital_id, references in sorted(by_hospital.items()):
        await emit(
            session=session,
            hospital_id=hospital_id,
            event_type=event_type,
            data={**data, "references": references},
            at=now,
        )


async def reinstate_access(
    *, session: AsyncSession, actor: Actor, caller: Caller, suspension_id: int, reason: str
) -> SuspensionOut:
    """End an action in the commission's region; the subject's next request is served again."""
    suspension = await session.scalar(
        select(AccessSuspension).where(AccessSuspension.id == suspension_id).with_for_update()
    )
    org = await session.get(Organisation, suspension.organisation_id) if suspension is not None else None
    if suspension is None or org is None or not covers(caller.region_code, org.region_code):
        raise NotFound("suspension_not_found", f"No suspension {suspension_id} in your region.")
    if suspension.reinstated_at is not None:
        raise Conflict("already_reinstated", "This action has already ended.")
    suspension.reinstated_at = actor.now
    suspension.reinstated_by_client_id = caller.client_id
    suspension.reinstate_reason = reason
    await session.flush()
    active = await _active_referrals(
        session, actor.now, subject_type=suspension.subject_type, subject_id=suspension.subject_id
    )
    await _tell_hospitals(
        session,
        actor.now,
        "access.reinstated",
        active,
        {
            "subject": await _subject_event_data(
                session, suspension.subject_type, suspension.subject_id, org
            ),
            "mode": suspension.mode,
            "reason": HOSPITAL_REASONS["reinstated"],
        },
    )
    await record(
        session=session,
        actor=actor,
        action="access.reinstated",
        reason=reason,
        detail={
            "suspension_id": suspension.id,
            "subject_type": suspension.subject_type,
            "subject_id": suspension.subject_id,
            "organisation_id": suspension.organisation_id,
            "mode": suspension.mode,
            "before": {
                "mode": suspension.mode,
                "in_force": suspension.until is None or suspension.until > actor.now,
            },
            "after": {"mode": suspension.mode, "in_force": False},
        },
    )
    return await suspension_out(session, suspension, actor.now)


async def list_suspensions(
    *,
    session: AsyncSession,
    caller: Caller,
    now: datetime,
    subject_type: str | None,
    organisation_id: int | None,
    active: bool | None,
    before_id: int | None,
    limit: int,
) -> tuple[list[SuspensionOut], int | None]:
    """Actions on subjects of the commission's region, newest first."""
    stmt = (
        select(AccessSuspension)
        .join(Organisation, Organisation.id == AccessSuspension.organisation_id)
        .where(within(Organisation.region_code, caller.region_code))
        .order_by(AccessSuspension.id.desc())
        .limit(limit + 1)
    )
    if subject_type is not None:
        stmt = stmt.where(AccessSuspension.subject_type == subject_type)
    if organisation_id is not None:
        stmt = stmt.where(AccessSuspension.organisation_id == organisation_id)
    if active is not None:
        stmt = stmt.where(in_force(now) if active else ~in_force(now))
    if before_id is not None:
        stmt = stmt.where(AccessSuspension.id < before_id)
    rows = list(await session.scalars(stmt))
    following = rows[limit - 1].id if len(rows) > limit else None
    return [await suspension_out(session, s, now) for s in rows[:limit]], following


# --- the audit trail -----------------------------------------------------------------------------


def _mentions_resident(resident_id: int) -> ColumnElement[bool]:
    """Entries about one resident: in the column, or among the residents a list read showed.

    The expression is spelt as in ix_audit_entries_resident_ids, so the GIN index serves it.
    """
    listed = literal_column("(audit_entries.detail -> 'resident_ids')", JSONB)
    return or_(AuditEntry.resident_id == resident_id, listed.contains(func.jsonb_build_array(resident_id)))


async def query_audit(
    *,
    session: AsyncSession,
    actor: Actor,
    caller: Caller,
    crypto: Crypto,
    resident_id_number: str | None,
    actor_client_id: int | None,
    actor_org_id: int | None,
    action: str | None,
    from_: datetime | None,
    to: datetime | None,
    before_id: int | None,
    limit: int,
) -> tuple[list[AuditEntryOut], int | None]:
    """Audit entries of the commission's region, newest first; the query is itself recorded (R15).

    An entry is in the region when its hospital or its actor's organisation is.
    """
    resident: Resident | None = None
    if resident_id_number is not None:
        try:
            normalised = normalise_id_number(resident_id_number, today=local_date(actor.now))
        except InvalidIdNumber as exc:
            raise Unprocessable("invalid_id_number", str(exc), reason=exc.reason) from None
        index = crypto.blind_index(normalised, purpose="resident_id")
        resident = await session.scalar(select(Resident).where(Resident.id_index == index))
    filters: dict[str, Any] = {
        "resident": (resident.id if resident else "not_found") if resident_id_number is not None else None,
        "actor_client_id": actor_client_id,
        "actor_org_id": actor_org_id,
        "action": action,
        "from": instant(from_) if from_ else None,
        "to": instant(to) if to else None,
        "before_id": before_id,
    }
    entries: list[AuditEntry] = []
    following = None
    if resident_id_number is None or resident is not None:
        hospital = aliased(Organisation)
        acting = aliased(Organisation)
        stmt = (
            select(AuditEntry)
            .outerjoin(hospital, hospital.id == AuditEntry.hospital_id)
            .outerjoin(acting, acting.id == AuditEntry.actor_org_id)
            .where(
                or_(
                    within(hospital.region_code, caller.region_code),
                    within(acting.region_code, caller.region_code),
                )
            )
            .order_by(AuditEntry.id.desc())
            .limit(limit + 1)
        )
        if resident is not None:
            stmt = stmt.where(_mentions_resident(resident.id))
        if actor_client_id is not None:
            stmt = stmt.where(AuditEntry.actor_client_id == actor_client_id)
        if actor_org_id is not None:
            stmt = stmt.where(AuditEntry.actor_org_id == actor_org_id)
        if action is not None:
            stmt = stmt.where(AuditEntry.action == action)
        if from_ is not None:
            stmt = stmt.where(AuditEntry.at >= from_)
        if to is not None:
            stmt = stmt.where(AuditEntry.at < to)
        if before_id is not None:
            stmt = stmt.where(AuditEntry.id < before_id)
        rows = list(await session.scalars(stmt))
        following = rows[limit - 1].id if len(rows) > limit else None
        entries = rows[:limit]

    masked: dict[int, str] = {}
    for entry in entries:
        if entry.resident_id is not None and entry.resident_id not in masked:
            shown = await session.get(Resident, entry.resident_id)
            assert shown is not None
            masked[entry.resident_id] = mask_id_number(
                crypto.decrypt(shown.id_number_enc, column="residents.id_number")
            )
    await record(
        session=session,
        actor=actor,
        action="audit.queried",
        resident_id=resident.id if resident else None,
        detail={"filters": filters, "entries": len(entries)},
    )
    items = [
        AuditEntryOut(
            id=e.id,
            at=e.at,
            request_id=e.request_id,
            actor=e.actor,
            actor_client_id=e.actor_client_id,
            actor_org_id=e.actor_org_id,
            action=e.action,
            code=e.code,
            hospital_id=e.hospital_id,
            resident_id=e.resident_id,
            resident_id_masked=masked.get(e.resident_id) if e.resident_id is not None else None,
            referral_id=e.referral_id,
            reason=e.reason,
            detail=e.detail,
        )
        for e in entries
    ]
    return items, following
