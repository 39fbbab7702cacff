"""The guards only booking needs: the no-show bar (R13) and the booking limits (R14).

Attendance decides bars and writes them; booking reads them here, under the advisory lock
both take on (hospital, resident).

Booking limits (R14): the database decides, under transaction-scoped advisory locks.

Every booking takes three locks before it counts: its family doctor's, its
institution's at the slot's hospital pool (kind and service date), and its
resident's. They are taken in ascending key order, so two bookings never wait
on each other crosswise, and held until commit or rollback. The counts run
after the locks at READ COMMITTED, each statement on a fresh snapshot, so they
see every booking committed by an earlier holder of the same lock: concurrent
bookings that share a doctor, a pool-day or a resident are decided one at a
time, whatever process or replica serves them. Locks are taken even where the
policy sets no limit, because a doctor's or a resident's count spans hospitals
whose policies differ. Decisions are in docs/limits.md.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import ColumnElement, and_, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.clock import SHANGHAI, local_date
from service.kit.db import advisory_key
from service.kit.errors import Conflict, Forbidden
from service.models.attendance import NoShowBar
from service.models.policy import Policy
from service.models.referrals import Referral
from service.models.slots import ClinicSession, Slot

HOUR = timedelta(hours=1)


def active_referral(today: date) -> ColumnElement[bool]:
    """A referral that still holds a slot: booked, not cancelled, not yet attended or missed, not past."""
    return and_(
        Referral.status == "booked",
        Referral.attendance.is_(None),
        Referral.service_date >= today,
    )


async def enforce_booking_limits(
    *,
    session: AsyncSession,
    policy: Policy,
    now: datetime,
    doctor_id: int,
    institution_id: int,
    hospital_id: int,
    resource_kind: str,
    service_date: date,
    resident_id: int,
) -> None:
    """Refuse (409) a booking that would exceed one of ``policy``'s limits; the locks stay held till commit.

    ``policy`` is the one in force for the booked slot. The caller inserts the
    referral in this same transaction, after this returns.
    """
    keys = {
        advisory_key("limits", "doctor", doctor_id),
        advisory_key("limits", "pool", institution_id, hospital_id, resource_kind, service_date.isoformat()),
        advisory_key("limits", "resident", resident_id),
    }
    for key in sorted(keys):
        await session.execute(select(func.pg_advisory_xact_lock(key)))

    if policy.doctor_hourly_limit is not None:
        await _doctor_hourly(session, policy.doctor_hourly_limit, now, doctor_id)
    if policy.doctor_daily_limit is not None:
        await _doctor_daily(session, policy.doctor_daily_limit, now, doctor_id)
    if policy.institution_share_limit is not None:
        await _institution_share(
            session,
            policy.institution_share_limit,
            now,
            institution_id=institution_id,
            hospital_id=hospital_id,
            resource_kind=resource_kind,
            service_date=service_date,
        )
    if policy.resident_active_limit is not None:
        await _resident_active(session, policy.resident_active_limit, now, resident_id)


async def _doctor_hourly(session: AsyncSession, limit: int, now: datetime, doctor_id: int) -> None:
    """Bookings made by the doctor in the 60 minutes before now, whatever became of them."""
    made = list(
        await session.scalars(
            select(Referral.booked_at)
            .where(Referral.referring_doctor_id == doctor_id, Referral.booked_at > now - HOUR)
            .order_by(Referral.booked_at)
        )
    )
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
        resets_at=resets_at.isoformat(),
        retry_after=max(1, math.ceil((resets_at - now).total_seconds())),
    )


async def _doctor_daily(session: AsyncSession, limit: int, now: datetime, doctor_id: int) -> None:
    """Bookings made by the doctor since Beijing-time midnight, whatever became of them."""
    today = local_date(now)
    midnight = datetime(today.year, today.month, today.day, tzinfo=SHANGHAI)
    made = await session.scalar(
        select(func.count()).where(
            Referral.referring_doctor_id == doctor_id,
            Referral.booked_at >= midnight,
            Referral.booked_at < midnight + timedelta(days=1),
        )
    )
    if (made or 0) < limit:
        return
    resets_at = midnight + timedelta(days=1)
    raise Conflict(
        "doctor_daily_limit",
        f"This family doctor has made {made} pool bookings today; the policy allows {limit} a day (R14).",
        limit=limit,
        current=made,
        resets_at=resets_at.isoformat(),
        retry_after=max(1, math.ceil((resets_at - now).total_seconds())),
    )


async def _institution_share(
    session: AsyncSession,
    share: Decimal,
    now: datetime,
    *,
    institution_id: int,
    hospital_id: int,
    resource_kind: str,
    service_date: date,
) -> None:
    """The institution's active referrals in one hospital's pool of one kind on one day, against its share."""
    pool = (
        await session.scalar(
            select(func.count())
            .select_from(Slot)
            .join(ClinicSession, ClinicSession.id == Slot.session_id)
            .where(
                Slot.hospital_id == hospital_id,
                Slot.resource_kind == resource_kind,
                ClinicSession.service_date == service_date,
                Slot.status.in_(("reserved", "booked")),
            )
        )
        or 0
    )
    held = (
        await session.scalar(
            select(func.count())
            .select_from(Referral)
            .join(Slot, Slot.id == Referral.slot_id)
            .where(
                Referral.booker_org_id == institution_id,
                Referral.hospital_id == hospital_id,
                Referral.service_date == service_date,
                Slot.resource_kind == resource_kind,
                active_referral(local_date(now)),
            )
        )
        or 0
    )
    cap = math.ceil(share * pool)
    if held < cap:
        return
    raise Conflict(
        "institution_share_limit",
        f"This institution already holds {held} of the {pool} {resource_kind} pool slots of this hospital "
        f"on {service_date.isoformat()}; the policy allows {share} of them, {cap} (R14).",
        limit=cap,
        current=held,
        pool_slots=pool,
        share=str(share),
    )


async def _resident_active(session: AsyncSession, limit: int, now: datetime, resident_id: int) -> None:
    """The resident's active referrals at every hospital."""
    held = (
        await session.scalar(
            select(func.count()).where(Referral.resident_id == resident_id, active_referral(local_date(now)))
        )
        or 0
    )
    if held < limit:
        return
    raise Conflict(
        "resident_active_limit",
        f"The resident already holds {held} active pool referrals; the policy allows {limit} (R14).",
        limit=limit,
        current=held,
    )


# --- no-show bars (R13) -------------------------------------------------------------------


async def lock_resident_at_hospital(
    session: AsyncSession, *, hospital_id: int, resident_id: int, shared: bool
) -> None:
    """Serialise bar decisions for one resident at one hospital against bookings there.

    Bookings take the lock shared (they never wait for each other); deciding a bar
    takes it exclusive, so a booking either sees the bar or committed before it.
    """
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    await session.execute(
        text(f"SELECT {function}(:key)"),
        {"key": advisory_key("no_show_bar", hospital_id, resident_id)},
    )


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


async def refuse_if_barred(session: AsyncSession, *, hospital_id: int, resident_id: int, on: date) -> None:
    """R13: a resident under a bar at this hospital cannot book its pool until the bar ends."""
    await lock_resident_at_hospital(session, hospital_id=hospital_id, resident_id=resident_id, shared=True)
    bar = await active_bar(session, hospital_id=hospital_id, resident_id=resident_id, on=on)
    if bar is not None:
        raise Forbidden(
            "resident_barred",
            f"After repeated no-shows the resident may not book this hospital's pool "
            f"through {bar.ends_on.isoformat()} (R13).",
            bar_ends_on=bar.ends_on.isoformat(),
        )
