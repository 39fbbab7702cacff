"""The closed-day summary of compliance reports: which days it holds, and the job that closes them.

A day is *closed* once it is in ``report_summary_window``; the summary tables then hold its
figures (revision 0017). The job closes every service date before today (Beijing), newest
first, then back to the first date any session has (a year back at most), one day per
transaction. Each
transaction takes an advisory lock that one replica holds at a time (the others skip their
pass) and the exclusive lock of the date it closes, which waits for every transaction
writing that date and holds off new ones until the summary rows and the wider window
commit together. After that, any change to a closed day recomputes its rows in the
writer's own transaction (the triggers of revision 0017), so the summary never lags.
One date per transaction also means a closing holds one date's lock: a writer holding two
dates' can never wait on it in a cycle.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date, timedelta
from functools import partial

import structlog
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.bounds import service_date_window
from service.kit.clock import Clock, local_date
from service.kit.db import Database, advisory_key
from service.kit.periodic import every
from service.models.reports import ReportSummaryWindow

log = structlog.get_logger("slotpool.reports")

# The advisory lock of a service date (two-key form, apart from the service's 64-bit keys): writers
# of a date hold it shared, the closing of the date exclusively. Revision 0017's triggers use the same.
DAY_LOCK = 16001
DAY_ZERO = date(2000, 1, 1)
# How long a closing waits for the writers of its days before giving up until the next pass.
CLOSE_LOCK_TIMEOUT = "5s"


@dataclass(frozen=True)
class Window:
    """The closed days: ``closed_from`` to ``closed_through``, both included."""

    closed_from: date
    closed_through: date

    def closed(self, date_from: date, date_to: date) -> tuple[date, date] | None:
        """The part of ``[date_from, date_to]`` inside the window, if any."""
        first, last = max(date_from, self.closed_from), min(date_to, self.closed_through)
        return (first, last) if first <= last else None

    def open(self, date_from: date, date_to: date) -> list[tuple[date, date]]:
        """The parts of ``[date_from, date_to]`` outside the window: none, one or two ranges."""
        ranges = []
        if date_from < self.closed_from:
            ranges.append((date_from, min(date_to, self.closed_from - timedelta(days=1))))
        if date_to > self.closed_through:
            ranges.append((max(date_from, self.closed_through + timedelta(days=1)), date_to))
        return ranges


async def read_window(*, session: AsyncSession) -> Window | None:
    """The closed days, or none before the first closing.

    The window only ever widens, and the rows of every day in it are exact at every commit,
    so a report may read it in one statement and the summary in the next.
    """
    row = (await session.execute(select(ReportSummaryWindow))).scalar_one_or_none()
    return None if row is None else Window(row.closed_from, row.closed_through)


async def close_next_day(*, session: AsyncSession, today: date) -> date | None:
    """Close one day in this transaction, and say which (none: nothing left, or another replica is at it).

    Forward first, to the day before ``today``; then backward, to the first service date of any
    session a year back at most (as far as a push reaches). A day is closed next to the window
    only, so the window stays one range.
    """
    if not await session.scalar(
        select(func.pg_try_advisory_xact_lock(advisory_key("reports", "close_days")))
    ):
        return None  # another replica is closing
    window = await read_window(session=session)
    yesterday = today - timedelta(days=1)
    if window is None:
        day = yesterday
    elif window.closed_through < yesterday:
        day = window.closed_through + timedelta(days=1)
    else:
        # Back to the first session, as far back as a push reaches: an older day (imported
        # history, a stray date) is counted live if ever asked for.
        reach, _ = service_date_window(today)
        earliest: date | None = await session.scalar(
            text("SELECT min(service_date) FROM clinic_sessions WHERE service_date >= :reach"),
            {"reach": reach},
        )
        if earliest is None or earliest >= window.closed_from:
            return None
        day = window.closed_from - timedelta(days=1)
    await session.execute(text(f"SET LOCAL lock_timeout = '{CLOSE_LOCK_TIMEOUT}'"))
    await session.execute(
        text("SELECT pg_advisory_xact_lock(:lock, :day)"), {"lock": DAY_LOCK, "day": (day - DAY_ZERO).days}
    )
    # Read after the lock: every writer of the day has committed, and the next ones wait for us.
    await session.execute(
        text(
            """
            SELECT report_days_refresh(array_agg(hospital_id), array_agg(service_date),
                                       array_agg(resource_kind), false)
            FROM (
                SELECT hospital_id, service_date, resource_kind::text FROM clinic_sessions
                WHERE service_date = :day
                UNION
                SELECT hospital_id, service_date, resource_kind::text FROM reservation_shortfalls
                WHERE service_date = :day
            ) AS keys
            """
        ),
        {"day": day},
    )
    await session.execute(
        text(
            """
            INSERT INTO report_summary_window (id, closed_from, closed_through) VALUES (true, :day, :day)
            ON CONFLICT (id) DO UPDATE SET
                closed_from = least(report_summary_window.closed_from, excluded.closed_from),
                closed_through = greatest(report_summary_window.closed_through, excluded.closed_through)
            """
        ),
        {"day": day},
    )
    return day


async def close_days(db: Database, clock: Clock, *, max_days: int = 400) -> int:
    """Close every day not closed yet (at most ``max_days``), one per transaction; how many."""
    today = local_date(clock.now())
    total = 0
    while total < max_days and await db.run(partial(_close, today=today)) is not None:
        total += 1
    if total:
        log.info("report days closed", days=total)
    return total


async def _close(session: AsyncSession, *, today: date) -> date | None:
    return await close_next_day(session=session, today=today)


async def summary_loop(db: Database, clock: Clock, *, interval: float, stop: asyncio.Event) -> None:
    await every(interval, partial(close_days, db, clock), name="report_summary", stop=stop)
