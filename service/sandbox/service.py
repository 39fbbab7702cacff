"""The sandbox clock: its row, how a process follows it, and how it moves (docs/sandbox.md).

The offset (how far the sandbox runs ahead of the wall clock) lives in one row of
``sandbox_clock``. A move commits the new offset; every process reads it at the start of
each request (``clock_sync``, in the request's first transaction) and every second for its
loops (``follow_clock``). So once a move has answered, the next request on any worker sees
the new time, and the loops within a second plus their own interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import exists, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.kit.bounds import DateOutOfRange
from service.kit.clock import SandboxClock, instant, local_date
from service.kit.context import Actor
from service.kit.db import Database, advisory_key
from service.kit.errors import Conflict
from service.kit.periodic import every
from service.models.registry import Organisation
from service.models.sandbox import SandboxClock as ClockRow
from service.sandbox.schemas import ClockOut

log = structlog.get_logger("slotpool.sandbox")

# How far ahead of the wall clock the sandbox may run: far enough for any rule (a year of
# bars, two years of sessions), near enough that no date leaves the API's window.
MAX_AHEAD = timedelta(days=3 * 366)


class SandboxRefused(Exception):
    """Why this database cannot be served as a sandbox, in one line."""


def _us(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


async def read_offset(session: AsyncSession) -> timedelta:
    """The sandbox's offset as committed; zero before the first move."""
    offset_us = await session.scalar(select(ClockRow.offset_us).where(ClockRow.id == 1))
    return timedelta(microseconds=offset_us or 0)


def clock_sync(clock: SandboxClock) -> Callable[[AsyncSession], Awaitable[None]]:
    """What a request's first transaction runs before it reads the clock."""

    async def sync(session: AsyncSession) -> None:
        clock.adopt(await read_offset(session))

    return sync


async def follow_clock(db: Database, clock: SandboxClock, *, interval: float, stop: asyncio.Event) -> None:
    """Keep this process's clock on the sandbox's, for its loops, until ``stop``."""

    async def once() -> None:
        clock.adopt(await db.run(read_offset))

    await every(interval, once, name="sandbox_clock", stop=stop)


async def claim_sandbox(session: AsyncSession, *, now: datetime) -> bool:
    """Make this database a sandbox, or confirm it is one; True when it was made one now.

    A database with organisations but no sandbox row has served on the wall clock (a
    deployment, or a development database used without ``--sandbox``): it is refused, so a
    sandbox is never started on data that was not made for it.
    """
    await session.execute(select(func.pg_advisory_xact_lock(advisory_key("sandbox", "clock"))))
    if await session.scalar(select(exists().where(ClockRow.id == 1))):
        return False
    if await session.scalar(select(exists().select_from(Organisation))):
        raise SandboxRefused(
            "this database already holds organisations served on the wall clock, so it is not a "
            "sandbox; start the sandbox on a new database (another SLOTPOOL_DATA_DIR or DATABASE_URL)"
        )
    session.add(ClockRow(id=1, offset_us=0, started_at=now))
    await session.flush()
    return True


def _out(wall: datetime, offset: timedelta, moved_at: datetime | None) -> ClockOut:
    """Instants in UTC, as every answer writes them (docs/webhooks.md, "One time format")."""
    now = (wall + offset).astimezone(UTC)
    return ClockOut(
        now=now,
        local_date=local_date(now).isoformat(),
        wall_now=wall.astimezone(UTC),
        offset_seconds=offset.total_seconds(),
        moved_at=None if moved_at is None else moved_at.astimezone(UTC),
    )


async def show_clock(*, session: AsyncSession, clock: SandboxClock) -> ClockOut:
    """The sandbox's time as committed (which this process's clock now follows)."""
    row = await session.scalar(select(ClockRow).where(ClockRow.id == 1))
    offset = timedelta(microseconds=row.offset_us) if row is not None else timedelta(0)
    clock.adopt(offset)
    return _out(clock.wall.now(), offset, row.moved_at if row is not None else None)


async def move_clock(
    *,
    session: AsyncSession,
    actor: Actor,
    clock: SandboxClock,
    to: datetime | None = None,
    advance: timedelta | None = None,
) -> ClockOut:
    """Move the sandbox's time forward to ``to`` or by ``advance``; never back (``clock_backwards``).

    The row is locked, so two moves at once apply one after the other, each from the time
    the other left.
    """
    wall = clock.wall.now()
    await session.execute(
        insert(ClockRow)
        .values(id=1, offset_us=0, started_at=wall)
        .on_conflict_do_nothing(index_elements=["id"])
    )
    row = await session.scalar(select(ClockRow).where(ClockRow.id == 1).with_for_update())
    assert row is not None
    current = wall + timedelta(microseconds=row.offset_us)
    field = "now" if to is not None else "advance"
    if advance is not None and advance > MAX_AHEAD:
        # Refused before it is added: a duration of millions of days would overflow the date.
        raise DateOutOfRange(field, current, wall + MAX_AHEAD)
    target = to if to is not None else current + (advance or timedelta(0))
    if target < current:
        raise Conflict(
            "clock_backwards",
            f"The sandbox clock only moves forward; it reads {instant(current)}.",
            now=instant(current),
        )
    if target - wall > MAX_AHEAD:
        raise DateOutOfRange(field, current, wall + MAX_AHEAD)
    offset = target - wall
    previous = timedelta(microseconds=row.offset_us)
    row.offset_us = _us(offset)
    row.moved_at = wall
    await session.flush()
    await record(
        session=session,
        actor=actor,
        action="sandbox.clock_moved",
        detail={
            "from": instant(current),
            "to": instant(target),
            "advanced_seconds": (target - current).total_seconds(),
            "offset_seconds": offset.total_seconds(),
            "previous_offset_seconds": previous.total_seconds(),
        },
    )
    # Not adopted here: the move is not committed yet. Every process, this one too, takes it
    # at its next request (in that request's first transaction) or its follower's next pass.
    log.info("sandbox clock moved", to=instant(target))
    return _out(wall, offset, wall)
