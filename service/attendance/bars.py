"""Whether a resident is barred from a hospital's pool (R13), asked inside the booking transaction."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.db import advisory_key
from service.kit.errors import Forbidden
from service.models.attendance import NoShowBar


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
