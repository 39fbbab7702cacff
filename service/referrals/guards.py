"""The guards only booking needs: the no-show bar (R13) and the booking limits (R14).

Attendance decides bars and writes them; booking reads them here, under the advisory lock
both take on (hospital, resident).

Booking limits (R14): the database decides, under transaction-scoped advisory locks.

A booking takes one lock per limit that its policy sets: its family doctor's for the
doctor's limits, its institution's at the slot's hospital pool (kind and service date)
for the share, its resident's for the active-referral limit. A booking whose policy sets
no limit of a kind reads no count of that kind, so it needs no lock to stay exact: it only
adds a referral, and every booking that does count it is decided under the lock, at READ
COMMITTED, each statement on a fresh snapshot, after every earlier holder committed. The
locks are taken in ascending key order in one statement, with the bar's shared lock, and
held until commit or rollback; the slot is claimed after them, so its row lock is the last
one taken and the shortest held. Decisions are in docs/limits.md and docs/performance.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import ColumnElement, and_, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.clock import SHANGHAI, instant, local_date
from service.kit.db import advisory_key
from service.kit.errors import Conflict, Forbidden
from service.models.attendance import NoShowBar
from service.models.policy import Policy
from service.models.referrals import Referral
from service.models.slots import ClinicSession, Slot
from service.models.waitlist import WaitlistEntry

HOUR = timedelta(hours=1)


def active_referral(today: date) -> ColumnElement[bool]:
    """A referral that still holds a slot: booked, not cancelled, not yet attended or missed, not past."""
    return and_(
        Referral.status == "booked",
        Referral.attendance.is_(None),
        Referral.service_date >= today,
    )


@dataclass(frozen=True)
class BookingSubject:
    """What one booking is counted against: its doctor, institution, pool-day and resident."""

    doctor_id: int
    institution_id: int
    hospital_id: int
    department_id: int
    resource_kind: str
    service_date: date
    resident_id: int
    # An entry being accepted (docs/waitlist.md): its place passes to the referral, so it is not
    # counted against the referral that replaces it.
    accepting_entry_id: int = 0


def active_entry(today: date) -> ColumnElement[bool]:
    """A waiting-list entry that still stands: waiting, its date range not yet over."""
    return and_(WaitlistEntry.status == "waiting", WaitlistEntry.to_date >= today)


def _limit_keys(policy: Policy, s: BookingSubject) -> set[int]:
    keys = set()
    if policy.doctor_hourly_limit is not None or policy.doctor_daily_limit is not None:
        keys.add(advisory_key("limits", "doctor", s.doctor_id))
    if policy.institution_share_limit is not None:
        keys.add(
            advisory_key(
                "limits", "pool", s.institution_id, s.hospital_id, s.resource_kind, s.service_date.isoformat()
            )
        )
    if policy.resident_active_limit is not None:
        keys.add(advisory_key("limits", "resident", s.resident_id))
    return keys


async def lock_for_booking(session: AsyncSession, *, policy: Policy, subject: BookingSubject) -> None:
    """The bar's shared lock and the locks of ``policy``'s limits, in one round trip, till commit.

    The select list is evaluated left to right, so the limit locks are taken in ascending order.
    """
    bar = func.pg_advisory_xact_lock_shared(literal(bar_key(subject.hospital_id, subject.resident_id)))
    limits = [func.pg_advisory_xact_lock(literal(key)) for key in sorted(_limit_keys(policy, subject))]
    await session.execute(select(bar, *limits))


@dataclass(frozen=True)
class Standing:
    """What the database says of a booking's subject, read after ``lock_for_booking``."""

    bar_ends_on: date | None
    duplicate: str | None
    doctor_hour: int | None
    doctor_day: int | None
    pool_slots: int | None
    institution_held: int | None
    resident_active: int | None


async def standing(
    session: AsyncSession, *, policy: Policy, subject: BookingSubject, now: datetime
) -> Standing:
    """The bar in force, a duplicate referral and every count ``policy``'s limits need, in one statement."""
    s = subject
    today = local_date(now)
    midnight = datetime(today.year, today.month, today.day, tzinfo=SHANGHAI)
    nothing = literal(None)
    columns = [
        select(NoShowBar.ends_on)
        .where(
            NoShowBar.hospital_id == s.hospital_id,
            NoShowBar.resident_id == s.resident_id,
            NoShowBar.lifted_at.is_(None),
            NoShowBar.starts_on <= today,
            NoShowBar.ends_on >= today,
        )
        .order_by(NoShowBar.ends_on.desc())
        .limit(1)
        .scalar_subquery(),
        select(Referral.reference)
        .where(
            Referral.resident_id == s.resident_id,
            Referral.department_id == s.department_id,
            Referral.service_date == s.service_date,
            Referral.status == "booked",
        )
        .limit(1)
        .scalar_subquery(),
        (
            select(func.count())
            .where(Referral.referring_doctor_id == s.doctor_id, Referral.booked_at > now - HOUR)
            .scalar_subquery()
            + _entries_made(s, now - HOUR, None)
        )
        if policy.doctor_hourly_limit is not None
        else nothing,
        (
            select(func.count())
            .where(
                Referral.referring_doctor_id == s.doctor_id,
                Referral.booked_at >= midnight,
                Referral.booked_at < midnight + timedelta(days=1),
            )
            .scalar_subquery()
            + _entries_made(s, midnight, midnight + timedelta(days=1))
        )
        if policy.doctor_daily_limit is not None
        else nothing,
    ]
    if policy.institution_share_limit is not None:
        columns += [
            select(func.count())
            .select_from(Slot)
            .join(ClinicSession, ClinicSession.id == Slot.session_id)
            .where(
                Slot.hospital_id == s.hospital_id,
                Slot.resource_kind == s.resource_kind,
                ClinicSession.service_date == s.service_date,
                # An offered slot is held for a waiting-list entry: still the pool's (docs/waitlist.md).
                Slot.status.in_(("reserved", "offered", "booked")),
            )
            .scalar_subquery(),
            select(func.count())
            .select_from(Referral)
            .join(Slot, Slot.id == Referral.slot_id)
            .where(
                Referral.booker_org_id == s.institution_id,
                Referral.hospital_id == s.hospital_id,
                Referral.service_date == s.service_date,
                Slot.resource_kind == s.resource_kind,
                active_referral(today),
            )
            .scalar_subquery(),
        ]
    else:
        columns += [nothing, nothing]
    columns.append(
        select(func.count())
        .where(Referral.resident_id == s.resident_id, active_referral(today))
        .scalar_subquery()
        + select(func.count())
        .where(
            WaitlistEntry.resident_id == s.resident_id,
            WaitlistEntry.id != s.accepting_entry_id,
            active_entry(today),
        )
        .scalar_subquery()
        if policy.resident_active_limit is not None
        else nothing
    )
    row = (await session.execute(select(*columns))).one()
    return Standing(*row)


def _entries_made(s: BookingSubject, since: datetime, until: datetime | None) -> ColumnElement[int]:
    """Waiting-list entries the doctor made in the window: each is an attempt on the pool like a
    booking (docs/waitlist.md). An accepted entry is counted by its referral instead."""
    made = select(func.count()).where(
        WaitlistEntry.referring_doctor_id == s.doctor_id,
        WaitlistEntry.created_at >= since if until is not None else WaitlistEntry.created_at > since,
        WaitlistEntry.status != "booked",
        WaitlistEntry.id != s.accepting_entry_id,
    )
    if until is not None:
        made = made.where(WaitlistEntry.created_at < until)
    return made.scalar_subquery()


def refuse_if_barred(found: Standing) -> None:
    """R13: a resident under a bar at this hospital cannot book its pool until the bar ends."""
    if found.bar_ends_on is not None:
        raise Forbidden(
            "resident_barred",
            f"After repeated no-shows the resident may not book this hospital's pool "
            f"through {found.bar_ends_on.isoformat()} (R13).",
            bar_ends_on=found.bar_ends_on.isoformat(),
        )


async def enforce_booking_limits(
    session: AsyncSession,
    *,
    policy: Policy,
    subject: BookingSubject,
    found: Standing,
    now: datetime,
    holds_slot: bool = True,
) -> None:
    """Refuse (409) a booking that would exceed one of ``policy``'s limits, from ``found``'s counts.

    ``policy`` is the one in force for the booked slot; the counts were read under the
    limits' locks, which stay held till the booking commits.
    """
    if policy.doctor_hourly_limit is not None and (found.doctor_hour or 0) >= policy.doctor_hourly_limit:
        await _doctor_hourly(session, policy.doctor_hourly_limit, now, subject)
    if policy.doctor_daily_limit is not None and (found.doctor_day or 0) >= policy.doctor_daily_limit:
        _doctor_daily(policy.doctor_daily_limit, now, found.doctor_day or 0)
    # A waiting-list entry holds no slot, so it is not measured against the institution's share.
    if policy.institution_share_limit is not None and holds_slot:
        _institution_share(
            policy.institution_share_limit,
            subject,
            pool=found.pool_slots or 0,
            held=found.institution_held or 0,
        )
    if (
        policy.resident_active_limit is not None
        and (found.resident_active or 0) >= policy.resident_active_limit
    ):
        raise Conflict(
            "resident_active_limit",
            f"The resident already holds {found.resident_active} active pool referrals; "
            f"the policy allows {policy.resident_active_limit} (R14).",
            limit=policy.resident_active_limit,
            current=found.resident_active,
        )


async def _doctor_hourly(session: AsyncSession, limit: int, now: datetime, subject: BookingSubject) -> None:
    """Bookings (and waiting-list entries) made by the doctor in the 60 minutes before now,
    whatever became of them."""
    doctor_id = subject.doctor_id
    made = list(
        await session.scalars(
            select(Referral.booked_at)
            .where(Referral.referring_doctor_id == doctor_id, Referral.booked_at > now - HOUR)
            .order_by(Referral.booked_at)
        )
    )
    made += list(
        await session.scalars(
            select(WaitlistEntry.created_at).where(
                WaitlistEntry.referring_doctor_id == doctor_id,
                WaitlistEntry.created_at > now - HOUR,
                WaitlistEntry.status != "booked",
                WaitlistEntry.id != subject.accepting_entry_id,
            )
        )
    )
    made.sort()
    if len(made) < limit:
        return
    # The window frees a place when the booking that leaves it brings the count below the limit.
    resets_at = made[len(made) - limit] + HOUR
    raise Conflict(
        "doctor_hourly_limit",
        f"This family doctor has made {len(made)} pool bookings in the last hour; "
        f"the policy allows {limit} (R14).",
        limit=limit,
        current=len(made),
        resets_at=instant(resets_at),
        retry_after=max(1, math.ceil((resets_at - now).total_seconds())),
    )


def _doctor_daily(limit: int, now: datetime, made: int) -> None:
    """Bookings made by the doctor since Beijing-time midnight, whatever became of them."""
    today = local_date(now)
    resets_at = datetime(today.year, today.month, today.day, tzinfo=SHANGHAI) + timedelta(days=1)
    raise Conflict(
        "doctor_daily_limit",
        f"This family doctor has made {made} pool bookings today; the policy allows {limit} a day (R14).",
        limit=limit,
        current=made,
        resets_at=instant(resets_at),
        retry_after=max(1, math.ceil((resets_at - now).total_seconds())),
    )


def _institution_share(share: Decimal, s: BookingSubject, *, pool: int, held: int) -> None:
    """The institution's active referrals in one hospital's pool of one kind on one day, against its share."""
    cap = math.ceil(share * pool)
    if held < cap:
        return
    raise Conflict(
        "institution_share_limit",
        f"This institution already holds {held} of the {pool} {s.resource_kind} pool slots of this hospital "
        f"on {s.service_date.isoformat()}; the policy allows {share} of them, {cap} (R14).",
        limit=cap,
        current=held,
        pool_slots=pool,
        share=str(share),
    )


# --- no-show bars (R13) -------------------------------------------------------------------


def bar_key(hospital_id: int, resident_id: int) -> int:
    """The advisory lock that orders bar decisions for one resident at one hospital against bookings."""
    return advisory_key("no_show_bar", hospital_id, resident_id)


async def lock_resident_at_hospital(session: AsyncSession, *, hospital_id: int, resident_id: int) -> None:
    """Serialise a bar decision for one resident at one hospital against bookings there.

    Bookings take the lock shared (``lock_for_booking``: they never wait for each other);
    deciding a bar takes it exclusive, so a booking either sees the bar or committed before it.
    """
    await session.execute(select(func.pg_advisory_xact_lock(literal(bar_key(hospital_id, resident_id)))))


async def active_bar(
    session: AsyncSession, *, hospital_id: int, resident_id: int, on: date
) -> NoShowBar | None:
    """The bar in force on ``on`` (Beijing date) that ends last, if any."""
    bar: NoShowBar | None = await session.scalar(
        select(NoShowBar)
        .where(
            NoShowBar.hospital_id == hospital_id,
            NoShowBar.resident_id == resident_id,
            NoShowBar.lifted_at.is_(None),
            NoShowBar.starts_on <= on,
            NoShowBar.ends_on >= on,
        )
        .order_by(NoShowBar.ends_on.desc())
        .limit(1)
    )
    return bar
