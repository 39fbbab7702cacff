"""Attendance reported by the HIS, the no-show rule (R13), the worklist and receipts."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import any_, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from service.attendance.schemas import (
    AttendanceReport,
    AttendanceResult,
    BarEffect,
    NoShowBarOut,
    ReportResult,
)
from service.audit.service import record, record_read
from service.kit.clock import instant, local_date
from service.kit.context import Actor
from service.kit.crypto import Crypto, mask_id_number, mask_name
from service.kit.errors import Conflict, NotFound, Problem
from service.kit.regions import covers
from service.models.attendance import NoShowBar
from service.models.policy import Policy
from service.models.referrals import REFERRAL_RESIDENT_NAME, Referral
from service.models.registry import Organisation
from service.models.residents import Resident
from service.models.slots import Slot
from service.outbox.events import emit, emit_to_institution
from service.policy.schemas import NoShowRule
from service.referrals.events import institution_referral_data, referral_event_data
from service.referrals.guards import active_bar, lock_resident_at_hospital
from service.referrals.schemas import NamedRef, ReferralOut
from service.referrals.views import load_view, load_views

# --- attendance reports -----------------------------------------------------------------


async def report_attendance(
    *,
    session: AsyncSession,
    actor: Actor,
    crypto: Crypto,
    hospital_id: int,
    reports: list[AttendanceReport],
) -> AttendanceResult:
    """Apply each report in its own savepoint; one refused item never spoils another."""
    results: list[ReportResult] = []
    for item in reports:
        try:
            async with session.begin_nested():
                results.append(await _apply_report(session, actor, crypto, hospital_id, item))
        except Problem as exc:
            results.append(
                ReportResult(reference=item.reference, result="refused", code=exc.code, detail=exc.detail)
            )
    return AttendanceResult(
        recorded=sum(r.result == "recorded" for r in results),
        corrected=sum(r.result == "corrected" for r in results),
        unchanged=sum(r.result == "unchanged" for r in results),
        refused=sum(r.result == "refused" for r in results),
        results=results,
    )


async def _own_referral(session: AsyncSession, hospital_id: int, reference: str) -> Referral:
    referral = await session.scalar(select(Referral).where(Referral.reference == reference).with_for_update())
    if referral is None or referral.hospital_id != hospital_id:
        raise NotFound("referral_not_found", f"No referral {reference} at this hospital.")
    return referral


async def _apply_report(
    session: AsyncSession, actor: Actor, crypto: Crypto, hospital_id: int, item: AttendanceReport
) -> ReportResult:
    referral = await _own_referral(session, hospital_id, item.reference)
    if referral.status == "cancelled":
        raise Conflict("referral_cancelled", "The referral was cancelled; there is no visit to report.")
    slot = await session.get(Slot, referral.slot_id)
    assert slot is not None
    if actor.now < slot.starts_at:
        raise Conflict(
            "too_early",
            "Attendance can be reported once the slot has started.",
            starts_at=instant(slot.starts_at),
        )
    previous = referral.attendance
    if previous == item.outcome:
        return ReportResult(reference=referral.reference, result="unchanged", outcome=item.outcome)

    await lock_resident_at_hospital(session, hospital_id=hospital_id, resident_id=referral.resident_id)
    referral.attendance = item.outcome
    referral.attendance_reported_at = actor.now
    referral.attendance_note = item.note
    await session.flush()
    await record(
        session=session,
        actor=actor,
        action="attendance.recorded" if previous is None else "attendance.corrected",
        code=item.outcome,
        hospital_id=hospital_id,
        resident_id=referral.resident_id,
        referral_id=referral.id,
        reason=item.note,
        detail={"reference": referral.reference, "outcome": item.outcome, "previous": previous},
    )
    effect = None
    if item.outcome == "no_show":
        effect = await _bar_after_no_show(session, actor, referral)
    elif previous == "no_show":
        effect = await _bar_after_correction(session, actor, referral)
    await _emit_attendance_recorded(session, actor, crypto, referral, previous=previous, effect=effect)
    if effect is not None and effect.effect in ("started", "lifted"):
        # After the attendance event, so the institution learns the outcome before its effect.
        await _tell_bookers_of_bar(
            session,
            crypto,
            bar_id=effect.bar_id,
            event_type="no_show_bar.started" if effect.effect == "started" else "no_show_bar.lifted",
            at=actor.now,
        )
    return ReportResult(
        reference=referral.reference,
        result="recorded" if previous is None else "corrected",
        outcome=item.outcome,
        bar=effect,
    )


async def _emit_attendance_recorded(
    session: AsyncSession,
    actor: Actor,
    crypto: Crypto,
    referral: Referral,
    *,
    previous: str | None,
    effect: BarEffect | None,
) -> None:
    """Tell the hospital what the pool now holds for the visit, and any bar the report started."""
    assert referral.attendance is not None
    view = await load_view(session, crypto, referral)
    data = referral_event_data(view)
    data["attendance"] = {
        "outcome": referral.attendance,
        "reported_at": instant(actor.now),
        "previous_outcome": previous,
    }
    data["no_show_bar"] = (
        {"starts_on": effect.starts_on.isoformat(), "ends_on": effect.ends_on.isoformat()}
        if effect is not None and effect.effect == "started"
        else None
    )
    # The booker institution learns the outcome too, without the HIS's note or the bar, which is
    # an event of its own (``_tell_bookers_of_bar``); one statement writes both.
    told = institution_referral_data(view)
    told["attendance"] = dict(data["attendance"])
    await emit(
        session=session,
        hospital_id=referral.hospital_id,
        event_type="referral.attendance_recorded",
        data=data,
        at=actor.now,
        institution_id=referral.booker_org_id,
        institution_data=told,
    )


async def _tell_bookers_of_bar(
    session: AsyncSession,
    crypto: Crypto,
    *,
    bar_id: int,
    event_type: Literal["no_show_bar.started", "no_show_bar.lifted"],
    at: datetime,
) -> None:
    """Tell each primary institution that booked one of the bar's no-show referrals that the bar
    started or was lifted: its own references only, the patient's masked name as it booked them,
    never the ID number nor the lifting party's own words (docs/webhooks.md)."""
    bar = await session.get(NoShowBar, bar_id)
    assert bar is not None
    hospital = await session.get(Organisation, bar.hospital_id)
    assert hospital is not None
    triggers = (
        await session.execute(
            select(Referral.booker_org_id, Referral.reference, Referral.resident_name_enc)
            .where(Referral.id.in_(bar.trigger_referral_ids))
            .order_by(Referral.service_date, Referral.id)
        )
    ).all()
    by_booker: dict[int, list[Any]] = {}
    for row in triggers:
        by_booker.setdefault(row.booker_org_id, []).append(row)
    for booker_id, rows in sorted(by_booker.items()):
        data: dict[str, Any] = {
            "hospital": {"code": hospital.code, "name": hospital.name},
            "patient": {
                "name_masked": mask_name(
                    crypto.decrypt(rows[-1].resident_name_enc, column=REFERRAL_RESIDENT_NAME)
                )
            },
            "bar": {"starts_on": bar.starts_on.isoformat(), "ends_on": bar.ends_on.isoformat()},
            "references": [row.reference for row in rows],
        }
        if event_type == "no_show_bar.lifted":
            data["lifted_by"] = bar.lift_kind
        await emit_to_institution(
            session=session,
            institution_id=booker_id,
            hospital_id=bar.hospital_id,
            event_type=event_type,
            data=data,
            at=at,
        )


# --- the no-show rule (R13) -----------------------------------------------------------------


async def _rule(session: AsyncSession, policy_id: int) -> tuple[Policy, NoShowRule]:
    policy = await session.get(Policy, policy_id)
    assert policy is not None
    return policy, NoShowRule.model_validate(policy.no_show_rule)


async def _countable_no_shows(
    session: AsyncSession,
    *,
    hospital_id: int,
    resident_id: int,
    as_of: date,
    window_days: int,
    exclude_bar_id: int | None = None,
) -> list[int]:
    """No-shows in the ``window_days`` days ending on ``as_of`` (by service date) not yet spent.

    A no-show is spent once it has triggered a bar, unless that bar was lifted by a
    correction (the bar never should have been).
    """
    spent = select(func.unnest(NoShowBar.trigger_referral_ids)).where(
        NoShowBar.hospital_id == hospital_id,
        NoShowBar.resident_id == resident_id,
        or_(NoShowBar.lift_kind.is_(None), NoShowBar.lift_kind != "correction"),
    )
    if exclude_bar_id is not None:
        spent = spent.where(NoShowBar.id != exclude_bar_id)
    rows = await session.scalars(
        select(Referral.id)
        .where(
            Referral.hospital_id == hospital_id,
            Referral.resident_id == resident_id,
            Referral.status == "booked",
            Referral.attendance == "no_show",
            Referral.service_date > as_of - timedelta(days=window_days),
            Referral.service_date <= as_of,
            Referral.id.not_in(spent),
        )
        .order_by(Referral.service_date, Referral.id)
    )
    return list(rows)


def _effect(bar: NoShowBar, effect: str) -> BarEffect:
    return BarEffect(bar_id=bar.id, effect=effect, starts_on=bar.starts_on, ends_on=bar.ends_on)


async def _bar_after_no_show(session: AsyncSession, actor: Actor, referral: Referral) -> BarEffect | None:
    """Start a bar when this no-show brings the resident to the hospital's threshold."""
    today = local_date(actor.now)
    if await active_bar(
        session, hospital_id=referral.hospital_id, resident_id=referral.resident_id, on=today
    ):
        return None  # already barred; this no-show stays countable for a later bar
    policy, rule = await _rule(session, referral.policy_id)
    no_shows = await _countable_no_shows(
        session,
        hospital_id=referral.hospital_id,
        resident_id=referral.resident_id,
        as_of=today,
        window_days=rule.window_days,
    )
    if len(no_shows) < rule.max_no_shows:
        return None
    bar = NoShowBar(
        resident_id=referral.resident_id,
        hospital_id=referral.hospital_id,
        policy_id=policy.id,
        starts_on=today,
        ends_on=today + timedelta(days=rule.bar_days - 1),
        trigger_referral_ids=no_shows,
        created_at=actor.now,
    )
    session.add(bar)
    await session.flush()
    await record(
        session=session,
        actor=actor,
        action="no_show_bar.started",
        hospital_id=referral.hospital_id,
        resident_id=referral.resident_id,
        referral_id=referral.id,
        reason=rule.text,
        detail={
            "bar_id": bar.id,
            "starts_on": bar.starts_on.isoformat(),
            "ends_on": bar.ends_on.isoformat(),
            "no_show_referral_ids": no_shows,
            "policy_id": policy.id,
            "rule": rule.model_dump(exclude={"text"}),
        },
    )
    return _effect(bar, "started")


async def _bar_after_correction(session: AsyncSession, actor: Actor, referral: Referral) -> BarEffect | None:
    """A no-show corrected to attended: decide again, as of its first day, the bar it triggered."""
    bar = await session.scalar(
        select(NoShowBar)
        .where(
            NoShowBar.hospital_id == referral.hospital_id,
            NoShowBar.resident_id == referral.resident_id,
            NoShowBar.lifted_at.is_(None),
            NoShowBar.ends_on >= local_date(actor.now),
            any_(NoShowBar.trigger_referral_ids) == referral.id,
        )
        .with_for_update()
    )
    if bar is None:
        return None
    _, rule = await _rule(session, bar.policy_id)
    remaining = await _countable_no_shows(
        session,
        hospital_id=bar.hospital_id,
        resident_id=bar.resident_id,
        as_of=bar.starts_on,
        window_days=rule.window_days,
        exclude_bar_id=bar.id,
    )
    if len(remaining) >= rule.max_no_shows:
        bar.trigger_referral_ids = remaining
        action, effect, reason = "no_show_bar.kept", "kept", None
    else:
        bar.lifted_at = actor.now
        bar.lifted_by_client_id = actor.client_id
        bar.lift_kind = "correction"
        bar.lift_reason = (
            f"No-show of referral {referral.reference} corrected to attended: "
            f"{len(remaining)} of the {rule.max_no_shows} no-shows the rule needs remain."
        )
        action, effect, reason = "no_show_bar.lifted", "lifted", bar.lift_reason
    await session.flush()
    await record(
        session=session,
        actor=actor,
        action=action,
        code="correction",
        hospital_id=bar.hospital_id,
        resident_id=bar.resident_id,
        referral_id=referral.id,
        reason=reason,
        detail={"bar_id": bar.id, "no_show_referral_ids": remaining},
    )
    return _effect(bar, effect)


# --- the hospital's worklist and receipts -----------------------------------------------------


async def list_worklist(
    *,
    session: AsyncSession,
    actor: Actor,
    crypto: Crypto,
    hospital_id: int,
    after: tuple[datetime, int] | None,
    limit: int,
) -> tuple[list[ReferralOut], tuple[datetime, int] | None]:
    """Booked referrals whose slot has ended with no attendance report, oldest slot first."""
    stmt = (
        select(Referral, Slot.ends_at)
        .join(Slot, Slot.id == Referral.slot_id)
        .where(
            Referral.hospital_id == hospital_id,
            Referral.status == "booked",
            Referral.attendance.is_(None),
            Slot.ends_at <= actor.now,
        )
        .order_by(Slot.ends_at, Referral.id)
        .limit(limit + 1)
    )
    if after is not None:
        stmt = stmt.where(tuple_(Slot.ends_at, Referral.id) > tuple_(*after))
    rows = (await session.execute(stmt)).all()
    following = (rows[limit - 1][1], rows[limit - 1][0].id) if len(rows) > limit else None
    views = await load_views(session, crypto, [referral for referral, _ in rows[:limit]])
    await record_read(
        session=session,
        actor=actor,
        action="referrals.listed",
        hospital_id=hospital_id,
        reads=[(referral.id, referral.resident_id) for referral, _ in rows[:limit]],
        detail={"via": "worklist"},
    )
    return [view.out(show_code=False) for view in views], following


async def receive_referral(
    *,
    session: AsyncSession,
    actor: Actor,
    crypto: Crypto,
    hospital_id: int,
    reference: str,
    his_reference: str | None,
) -> ReferralOut:
    """The HIS acknowledges a referral into its own system; repeating it changes nothing."""
    referral = await _own_referral(session, hospital_id, reference)
    if referral.status == "cancelled":
        raise Conflict("referral_cancelled", "The referral was cancelled; there is nothing to receive.")
    first = referral.received_at is None
    if not first and his_reference is not None and referral.his_reference not in (None, his_reference):
        raise Conflict(
            "his_reference_conflict",
            "The referral was received under another HIS reference.",
            his_reference=referral.his_reference,
        )
    if first or (his_reference is not None and referral.his_reference is None):
        if first:
            referral.received_at = actor.now
        if his_reference is not None:
            referral.his_reference = his_reference
        await session.flush()
        if first:
            # The booker institution learns its referral reached the HIS (once; never the HIS's
            # own reference).
            told = institution_referral_data(await load_view(session, crypto, referral))
            told["received_at"] = instant(actor.now)
            await emit_to_institution(
                session=session,
                institution_id=referral.booker_org_id,
                hospital_id=hospital_id,
                event_type="referral.received",
                data=told,
                at=actor.now,
            )
        await record(
            session=session,
            actor=actor,
            action="referral.received",
            hospital_id=hospital_id,
            resident_id=referral.resident_id,
            referral_id=referral.id,
            detail={"reference": referral.reference, "his_reference": his_reference, "first": first},
        )
    return (await load_view(session, crypto, referral)).out(show_code=False)


# --- no-show bars for the commission ------------------------------------------------------------


async def _hospitals_in_region(session: AsyncSession, region_code: str) -> list[int]:
    hospitals = await session.scalars(select(Organisation).where(Organisation.kind == "hospital"))
    return [h.id for h in hospitals if covers(region_code, h.region_code)]


async def bar_out(*, session: AsyncSession, crypto: Crypto, bar: NoShowBar, today: date) -> NoShowBarOut:
    hospital = await session.get(Organisation, bar.hospital_id)
    resident = await session.get(Resident, bar.resident_id)
    policy, rule = await _rule(session, bar.policy_id)
    assert hospital is not None and resident is not None
    triggers = (
        await session.execute(
            select(Referral.reference, Referral.resident_name_enc)
            .where(Referral.id.in_(bar.trigger_referral_ids))
            .order_by(Referral.service_date, Referral.id)
        )
    ).all()
    # The name of the latest no-show referral, as booked: the resident row holds no shared name.
    name = (
        crypto.decrypt(triggers[-1].resident_name_enc, column=REFERRAL_RESIDENT_NAME)
        if triggers
        else crypto.decrypt(resident.name_enc, column="residents.name")
    )
    return NoShowBarOut(
        id=bar.id,
        hospital=NamedRef(id=hospital.id, code=hospital.code, name=hospital.name),
        resident_name_masked=mask_name(name),
        resident_id_masked=mask_id_number(
            crypto.decrypt(resident.id_number_enc, column="residents.id_number")
        ),
        starts_on=bar.starts_on,
        ends_on=bar.ends_on,
        active=bar.lifted_at is None and bar.starts_on <= today <= bar.ends_on,
        no_show_references=[t.reference for t in triggers],
        policy=f"{policy.code} v{policy.version}",
        rule=rule.text,
        created_at=bar.created_at,
        lifted_at=bar.lifted_at,
        lift_kind=bar.lift_kind,
        lift_reason=bar.lift_reason,
    )


async def list_bars(
    *,
    session: AsyncSession,
    actor: Actor,
    crypto: Crypto,
    region_code: str,
    hospital_id: int | None,
    active: bool | None,
    before_id: int | None,
    limit: int,
) -> tuple[list[NoShowBarOut], int | None]:
    """Bars at the hospitals of the commission's region, newest first; the read is audited (R15)."""
    today = local_date(actor.now)
    hospitals = [
        h for h in await _hospitals_in_region(session, region_code) if hospital_id is None or h == hospital_id
    ]
    in_force = NoShowBar.lifted_at.is_(None) & (NoShowBar.starts_on <= today) & (NoShowBar.ends_on >= today)
    stmt = (
        select(NoShowBar)
        .where(NoShowBar.hospital_id.in_(hospitals))
        .order_by(NoShowBar.id.desc())
        .limit(limit + 1)
    )
    if active is not None:
        stmt = stmt.where(in_force if active else ~in_force)
    if before_id is not None:
        stmt = stmt.where(NoShowBar.id < before_id)
    bars = list(await session.scalars(stmt))
    following = bars[limit - 1].id if len(bars) > limit else None
    items = [await bar_out(session=session, crypto=crypto, bar=bar, today=today) for bar in bars[:limit]]
    await record_read(
        session=session,
        actor=actor,
        action="no_show_bars.listed",
        reads=[(None, bar.resident_id) for bar in bars[:limit]],
        detail={"bar_ids": [bar.id for bar in bars[:limit]]},
    )
    return items, following


async def lift_bar(
    *,
    session: AsyncSession,
    actor: Actor,
    crypto: Crypto,
    region_code: str,
    bar_id: int,
    reason: str,
) -> NoShowBarOut:
    """The commission lifts a bar at a hospital of its region, with a recorded reason."""
    bar = await session.scalar(select(NoShowBar).where(NoShowBar.id == bar_id).with_for_update())
    hospital = await session.get(Organisation, bar.hospital_id) if bar is not None else None
    if bar is None or hospital is None or not covers(region_code, hospital.region_code):
        raise NotFound("bar_not_found", f"No no-show bar {bar_id} in this commission's region.")
    today = local_date(actor.now)
    if bar.lifted_at is not None:
        raise Conflict("bar_already_lifted", "The bar was already lifted.")
    if bar.ends_on < today:
        raise Conflict("bar_ended", "The bar has already ended.", ends_on=bar.ends_on.isoformat())
    bar.lifted_at = actor.now
    bar.lifted_by_client_id = actor.client_id
    bar.lift_kind = "commission"
    bar.lift_reason = reason
    await session.flush()
    await record(
        session=session,
        actor=actor,
        action="no_show_bar.lifted",
        code="commission",
        hospital_id=bar.hospital_id,
        resident_id=bar.resident_id,
        reason=reason,
        detail={"bar_id": bar.id, "ends_on": bar.ends_on.isoformat()},
    )
    await _tell_bookers_of_bar(session, crypto, bar_id=bar.id, event_type="no_show_bar.lifted", at=actor.now)
    return await bar_out(session=session, crypto=crypto, bar=bar, today=today)
