"""The detection pass (R14) and the commission's reading and acknowledging of alerts.

A pass computes every signal over its sliding window ending now, per hospital
with recent referrals, for each family doctor and each booking institution, with
SQL over referrals, slots, sessions, contracts and organisations. Thresholds come
from the hospital's outpatient policy in force today (docs/signals.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import Select, bindparam, or_, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from service.audit.service import record
from service.kit.clock import local_date
from service.kit.context import Actor
from service.kit.crypto import Crypto, mask_name
from service.kit.db import advisory_key
from service.kit.errors import Conflict, NotFound, Problem
from service.kit.regions import within
from service.models.referrals import REFERRAL_RESIDENT_NAME, Referral
from service.models.registry import Doctor, Organisation
from service.models.signals import SIGNALS, Alert, IdentityConflict
from service.models.slots import ClinicSession
from service.policy.service import policy_in_force
from service.policy.signal_rules import MAX_WINDOW_HOURS, SignalRule, SignalThresholds
from service.referrals.schemas import NamedRef
from service.registry.schemas import DEFAULT_OPENING_HOURS
from service.signals.schemas import AlertOut, EvidenceReferral

# One replica computes at a time: the pass takes this transaction-level advisory lock or skips.
DETECTION_LOCK = advisory_key("signals", "detection")
CANCELLED_BY_BOOKER = "r.cancelled_by IN ('family_doctor', 'hotline')"
BOOKED_IN_WINDOW = "r.booked_at > :start AND r.booked_at <= :now"
LOCAL = "(r.encountered_at AT TIME ZONE 'Asia/Shanghai')"


@dataclass(frozen=True)
class SignalQuery:
    joins: str
    base: str
    hit: str


QUERIES: dict[str, SignalQuery] = {
    # Referrals booked in the window; hits: cancelled by the booker soon after booking.
    "book_cancel_churn": SignalQuery(
        joins="",
        base=BOOKED_IN_WINDOW,
        hit=f"{CANCELLED_BY_BOOKER} AND r.cancelled_at <= :now"
        " AND r.cancelled_at - r.booked_at <= make_interval(hours => :hold_hours)",
    ),
    # The booker's cancellations in the window; hits: those close to the slot's public release.
    "cancel_near_release": SignalQuery(
        joins="JOIN slots s ON s.id = r.slot_id",
        base=f"{CANCELLED_BY_BOOKER} AND r.cancelled_at > :start AND r.cancelled_at <= :now",
        hit="r.cancelled_at >= s.public_at - make_interval(mins => :near_minutes)"
        " AND r.cancelled_at <= s.public_at + make_interval(mins => :near_minutes)",
    ),
    # Referrals booked in the window; hits: the resident's first contract with this doctor is new.
    "new_signing_referrals": SignalQuery(
        joins="",
        base=BOOKED_IN_WINDOW,
        hit="(SELECT min(c.starts_on) FROM family_doctor_contracts c"
        " WHERE c.resident_id = r.resident_id AND c.family_doctor_id = r.referring_doctor_id"
        " AND c.institution_id = r.booker_org_id)"
        " > CAST(r.booked_at AT TIME ZONE 'Asia/Shanghai' AS date) - CAST(:recent_days AS integer)",
    ),
    # Outpatient referrals booked in the window; hits: a senior doctor's slot.
    "senior_only_referrals": SignalQuery(
        joins="JOIN clinic_sessions cs ON cs.id = r.session_id",
        base=f"{BOOKED_IN_WINDOW} AND cs.resource_kind = 'outpatient'",
        hit="cs.doctor_title IN ('chief', 'associate_chief')",
    ),
    # Referrals booked in the window; hits: another resident's consultation by the same doctor
    # lies closer than gap_minutes.
    "consultation_burst": SignalQuery(
        joins="",
        base=BOOKED_IN_WINDOW,
        hit="EXISTS (SELECT 1 FROM referrals o WHERE o.referring_doctor_id = r.referring_doctor_id"
        " AND o.resident_id <> r.resident_id AND o.booked_at <= :now"
        " AND o.encountered_at > r.encountered_at - make_interval(mins => :gap_minutes)"
        " AND o.encountered_at < r.encountered_at + make_interval(mins => :gap_minutes))",
    ),
    # Referrals booked in the window; hits: the consultation lies outside the booker's opening hours.
    "consultation_off_hours": SignalQuery(
        joins="JOIN organisations bo ON bo.id = r.booker_org_id",
        base=BOOKED_IN_WINDOW,
        hit="NOT EXISTS (SELECT 1 FROM jsonb_array_elements("
        "COALESCE(bo.opening_hours, :default_hours)"
        f" -> to_char({LOCAL}, 'dy')) AS iv(span)"
        f" WHERE CAST({LOCAL} AS time) >= CAST(iv.span ->> 0 AS time)"
        f" AND CAST({LOCAL} AS time) < CAST(iv.span ->> 1 AS time))",
    ),
}
EXTRA_PARAMS = ("hold_hours", "near_minutes", "recent_days", "gap_minutes")


@dataclass(frozen=True)
class Finding:
    signal: str
    hospital_id: int
    institution_id: int
    doctor_id: int | None
    policy_id: int | None
    rule: SignalRule
    window_start: datetime
    value: Fraction
    events: int
    evidence: list[int]

    @property
    def key(self) -> tuple[str, int, int, int]:
        return (self.signal, self.hospital_id, self.institution_id, self.doctor_id or 0)


@dataclass(frozen=True)
class PassResult:
    raised: int
    updated: int
    closed: int


def _decimal(value: Fraction | float) -> Decimal:
    exact = (
        Decimal(value.numerator) / Decimal(value.denominator)
        if isinstance(value, Fraction)
        else Decimal(str(value))
    )
    return exact.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


async def thresholds_for(
    session: AsyncSession, *, hospital_id: int, now: datetime
) -> tuple[SignalThresholds, int | None]:
    """The hospital's outpatient policy in force today decides; without one, the defaults."""
    try:
        policy = await policy_in_force(
            session=session, hospital_id=hospital_id, on=local_date(now), kind="outpatient"
        )
    except Problem:
        return SignalThresholds(), None
    return SignalThresholds.model_validate(policy.signal_thresholds), policy.id


async def _pool_senior_share(
    session: AsyncSession, *, hospital_id: int, start: datetime, now: datetime
) -> Fraction:
    """The senior share of the hospital's outpatient pool while the window was open."""
    row = (
        await session.execute(
            text(
                "SELECT count(*) AS total,"
                " count(*) FILTER (WHERE cs.doctor_title IN ('chief', 'associate_chief')) AS senior"
                " FROM slots s JOIN clinic_sessions cs ON cs.id = s.session_id"
                " WHERE s.hospital_id = :hospital_id AND s.resource_kind = 'outpatient'"
                " AND s.status IN ('reserved', 'offered', 'booked', 'returned')"
                " AND s.pool_opens_at <= :now AND s.public_at > :start"
            ),
            {"hospital_id": hospital_id, "start": start, "now": now},
        )
    ).one()
    return Fraction(row.senior, row.total) if row.total else Fraction(0)


async def _compute(
    session: AsyncSession,
    *,
    signal: str,
    subject_type: str,
    hospital_id: int,
    rule: SignalRule,
    policy_id: int | None,
    now: datetime,
) -> list[Finding]:
    query = QUERIES[signal]
    doctor = "r.referring_doctor_id" if subject_type == "doctor" else "CAST(NULL AS bigint)"
    group = "r.booker_org_id, r.referring_doctor_id" if subject_type == "doctor" else "r.booker_org_id"
    sql = (
        f"SELECT r.booker_org_id AS institution_id, {doctor} AS doctor_id, count(*) AS events,"
        f" count(*) FILTER (WHERE {query.hit}) AS hits,"
        f" array_agg(r.id ORDER BY r.id) FILTER (WHERE {query.hit}) AS evidence"
        f" FROM referrals r {query.joins}"
        f" WHERE r.hospital_id = :hospital_id AND {query.base}"
        f" GROUP BY {group} HAVING count(*) >= :min_events"
    )
    start = now - timedelta(hours=rule.window_hours)
    params: dict[str, Any] = {
        "hospital_id": hospital_id,
        "start": start,
        "now": now,
        "min_events": rule.min_events,
    }
    for name in EXTRA_PARAMS:
        if f":{name}" in sql:
            params[name] = getattr(rule, name)
    statement = text(sql)
    if ":default_hours" in sql:
        params["default_hours"] = DEFAULT_OPENING_HOURS
        statement = statement.bindparams(bindparam("default_hours", type_=JSONB))
    rows = (await session.execute(statement, params)).all()
    baseline = Fraction(0)
    if signal == "senior_only_referrals" and rows:
        baseline = await _pool_senior_share(session, hospital_id=hospital_id, start=start, now=now)
    threshold = Fraction(str(rule.threshold))
    findings = []
    for row in rows:
        value = Fraction(row.hits, row.events) - baseline
        if row.hits and value >= threshold:
            findings.append(
                Finding(
                    signal=signal,
                    hospital_id=hospital_id,
                    institution_id=row.institution_id,
                    doctor_id=row.doctor_id,
                    policy_id=policy_id,
                    rule=rule,
                    window_start=start,
                    value=value,
                    events=row.events,
                    evidence=list(row.evidence),
                )
            )
    return findings


async def detect_signals(*, session: AsyncSession, now: datetime) -> PassResult | None:
    """One detection pass: upsert alerts above threshold and close those that fell below.

    Returns None when another replica holds the pass; its result will be the same.
    """
    if not await session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": DETECTION_LOCK}):
        return None
    horizon = now - timedelta(hours=MAX_WINDOW_HOURS)
    hospitals = await session.scalars(
        select(Referral.hospital_id)
        .where(
            or_(
                Referral.booked_at > horizon,
                Referral.cancelled_at > horizon,
            )
        )
        .distinct()
        .order_by(Referral.hospital_id)
    )
    findings: dict[tuple[str, int, int, int], Finding] = {}
    for hospital_id in list(hospitals):
        thresholds, policy_id = await thresholds_for(session, hospital_id=hospital_id, now=now)
        for signal in SIGNALS:
            for subject_type in ("doctor", "institution"):
                for finding in await _compute(
                    session,
                    signal=signal,
                    subject_type=subject_type,
                    hospital_id=hospital_id,
                    rule=thresholds.rule(signal),
                    policy_id=policy_id,
                    now=now,
                ):
                    findings[finding.key] = finding
    live = {
        (a.signal, a.hospital_id, a.institution_id, a.doctor_id or 0): a
        for a in await session.scalars(
            select(Alert).where(Alert.status != "closed").order_by(Alert.id).with_for_update()
        )
    }
    actor = Actor.system("signals", now=now)
    raised = updated = closed = 0
    for key, ended in live.items():
        if key not in findings:
            ended.status = "closed"
            ended.closed_at = now
            closed += 1
            await _record(session, actor, "alert.closed", ended)
    for key, finding in findings.items():
        alert = live.get(key)
        if alert is None:
            alert = Alert(
                signal=finding.signal,
                subject_type="doctor" if finding.doctor_id is not None else "institution",
                institution_id=finding.institution_id,
                doctor_id=finding.doctor_id,
                hospital_id=finding.hospital_id,
                evidence_referral_ids=[],
                first_seen_at=now,
                status="open",
            )
            session.add(alert)
            raised += 1
        else:
            updated += 1
        alert.policy_id = finding.policy_id
        alert.window_hours = finding.rule.window_hours
        alert.window_start = finding.window_start
        alert.window_end = now
        alert.value = _decimal(finding.value)
        alert.threshold = _decimal(finding.rule.threshold)
        alert.events = finding.events
        alert.evidence_referral_ids = sorted(set(alert.evidence_referral_ids) | set(finding.evidence))
        alert.last_seen_at = now
        if alert.id is None:
            await session.flush()
            await _record(session, actor, "alert.raised", alert)
    await session.flush()
    return PassResult(raised=raised, updated=updated, closed=closed)


async def _record(session: AsyncSession, actor: Actor, action: str, alert: Alert) -> None:
    await record(
        session=session,
        actor=actor,
        action=action,
        code=alert.signal,
        hospital_id=alert.hospital_id,
        detail={
            "alert_id": alert.id,
            "subject_type": alert.subject_type,
            "institution_id": alert.institution_id,
            "doctor_id": alert.doctor_id,
            "value": str(alert.value),
            "threshold": str(alert.threshold),
            "evidence_referral_ids": alert.evidence_referral_ids,
        },
    )


# --- the commission's view -----------------------------------------------------------------


def _in_region(region_code: str) -> Select[Alert]:
    """Alerts about a hospital or a booking institution of the commission's region."""
    hospital = aliased(Organisation)
    institution = aliased(Organisation)
    return (
        select(Alert)
        .join(hospital, hospital.id == Alert.hospital_id)
        .join(institution, institution.id == Alert.institution_id)
        .where(
            or_(
                within(hospital.region_code, region_code),
                within(institution.region_code, region_code),
            )
        )
    )


async def list_alerts(
    *,
    session: AsyncSession,
    region_code: str,
    signal: str | None,
    status: str | None,
    subject_type: str | None,
    institution_id: int | None,
    doctor_id: int | None,
    hospital_id: int | None,
    before_id: int | None,
    limit: int,
) -> tuple[list[Alert], int | None]:
    """Alerts of the region, newest first; the id of the last one when more follow."""
    stmt = _in_region(region_code).order_by(Alert.id.desc()).limit(limit + 1)
    if signal is not None:
        stmt = stmt.where(Alert.signal == signal)
    if status is not None:
        stmt = stmt.where(Alert.status == status)
    if subject_type is not None:
        stmt = stmt.where(Alert.subject_type == subject_type)
    if institution_id is not None:
        stmt = stmt.where(Alert.institution_id == institution_id)
    if doctor_id is not None:
        stmt = stmt.where(Alert.doctor_id == doctor_id)
    if hospital_id is not None:
        stmt = stmt.where(Alert.hospital_id == hospital_id)
    if before_id is not None:
        stmt = stmt.where(Alert.id < before_id)
    rows = list(await session.scalars(stmt))
    following = rows[limit - 1].id if len(rows) > limit else None
    return rows[:limit], following


async def get_alert(*, session: AsyncSession, region_code: str, alert_id: int, lock: bool = False) -> Alert:
    stmt = _in_region(region_code).where(Alert.id == alert_id)
    if lock:
        stmt = stmt.with_for_update(of=Alert)
    alert = await session.scalar(stmt)
    if alert is None:
        raise NotFound("alert_not_found", f"No alert {alert_id} in your region.")
    return alert


def mark_acknowledged(row: Alert | IdentityConflict, actor: Actor, note: str | None, *, what: str) -> None:
    """The commission has seen an alert or a conflict; a live one stays live until its cause ends."""
    if row.acknowledged_at is not None:
        raise Conflict("already_acknowledged", f"{what} was acknowledged already.")
    row.acknowledged_at = actor.now
    row.acknowledged_by_client_id = actor.client_id
    row.acknowledgement_note = note
    if row.status == "open":
        row.status = "acknowledged"


async def acknowledge_alert(
    *, session: AsyncSession, actor: Actor, region_code: str, alert_id: int, note: str | None
) -> Alert:
    """The commission has seen the alert; a live one stays live (and undoubled) until it falls below."""
    alert = await get_alert(session=session, region_code=region_code, alert_id=alert_id, lock=True)
    mark_acknowledged(alert, actor, note, what=f"Alert {alert_id}")
    await session.flush()
    await record(
        session=session,
        actor=actor,
        action="alert.acknowledged",
        code=alert.signal,
        hospital_id=alert.hospital_id,
        reason=note,
        detail={"alert_id": alert.id},
    )
    return alert


async def record_alert_read(*, session: AsyncSession, actor: Actor, alerts: list[Alert]) -> None:
    """Evidence names residents (masked): every read is on the audit trail, one entry per request."""
    await record(
        session=session,
        actor=actor,
        action="alerts.read",
        detail={
            "alert_ids": [a.id for a in alerts],
            "referral_ids": sorted({r for a in alerts for r in a.evidence_referral_ids}),
        },
    )


def _named(org: Organisation | Doctor) -> NamedRef:
    return NamedRef(id=org.id, code=org.code, name=org.name)


async def alerts_out(*, session: AsyncSession, crypto: Crypto, alerts: list[Alert]) -> list[AlertOut]:
    """Alerts with their evidence referrals; residents masked, no ID numbers."""
    referral_ids = sorted({r for a in alerts for r in a.evidence_referral_ids})
    rows = (
        await session.execute(
            select(Referral, Organisation, ClinicSession.doctor_title)
            .join(Organisation, Organisation.id == Referral.hospital_id)
            .join(ClinicSession, ClinicSession.id == Referral.session_id)
            .where(Referral.id.in_(referral_ids))
        )
    ).all()
    evidence: dict[int, EvidenceReferral] = {}
    for referral, hospital, title in rows:
        evidence[referral.id] = EvidenceReferral(
            reference=referral.reference,
            hospital=_named(hospital),
            service_date=referral.service_date,
            booked_at=referral.booked_at,
            encountered_at=referral.encountered_at,
            status=referral.status,
            cancelled_at=referral.cancelled_at,
            cancelled_by=referral.cancelled_by,
            doctor_title=title,
            resident_name_masked=mask_name(
                crypto.decrypt(referral.resident_name_enc, column=REFERRAL_RESIDENT_NAME)
            ),
        )
    org_ids = {a.hospital_id for a in alerts} | {a.institution_id for a in alerts}
    orgs = {o.id: o for o in await session.scalars(select(Organisation).where(Organisation.id.in_(org_ids)))}
    doctor_ids = {a.doctor_id for a in alerts if a.doctor_id is not None}
    doctors = {d.id: d for d in await session.scalars(select(Doctor).where(Doctor.id.in_(doctor_ids)))}
    return [
        AlertOut(
            id=a.id,
            signal=a.signal,
            subject_type=a.subject_type,
            institution=_named(orgs[a.institution_id]),
            doctor=_named(doctors[a.doctor_id]) if a.doctor_id is not None else None,
            hospital=_named(orgs[a.hospital_id]),
            policy_id=a.policy_id,
            window_hours=a.window_hours,
            window_start=a.window_start,
            window_end=a.window_end,
            value=a.value,
            threshold=a.threshold,
            events=a.events,
            status=a.status,
            first_seen_at=a.first_seen_at,
            last_seen_at=a.last_seen_at,
            closed_at=a.closed_at,
            acknowledged_at=a.acknowledged_at,
            acknowledgement_note=a.acknowledgement_note,
            evidence=[evidence[r] for r in a.evidence_referral_ids if r in evidence],
        )
        for a in alerts
    ]
