"""The one clock every rule reads. Tests swap in a ManualClock."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")


class Clock:
    """Wall-clock time, always timezone-aware."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock(Clock):
    """A clock that stands still until moved."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._now = start

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        if when.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._now = when

    def advance(self, delta: timedelta) -> None:
        self._now += delta


class SandboxClock(Clock):
    """The sandbox's clock: wall time plus an offset that only ever grows (docs/sandbox.md).

    The offset is kept in the database (``sandbox_clock``); every process adopts it at the
    start of each request and at every pass of its clock follower, so all workers and loops
    of one sandbox read one time. ``wall`` is the clock underneath (a ManualClock in tests).
    """

    def __init__(self, wall: Clock | None = None) -> None:
        self.wall = wall or Clock()
        self._offset = timedelta(0)

    @property
    def offset(self) -> timedelta:
        return self._offset

    def now(self) -> datetime:
        return self.wall.now() + self._offset

    def adopt(self, offset: timedelta) -> None:
        """Take the database's offset; an older reading never moves this clock back."""
        if offset > self._offset:
            self._offset = offset


def local_date(when: datetime) -> date:
    """The Beijing-time calendar date of an instant: rules count days in Asia/Shanghai."""
    return when.astimezone(SHANGHAI).date()


def local_datetime(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=SHANGHAI)


def zh_instant(when: datetime) -> str:
    """An instant as a patient reads it: Beijing time, e.g. 3月10日06:00 (no zero padding)."""
    local = when.astimezone(SHANGHAI)
    return f"{local.month}月{local.day}日{local:%H:%M}"


def instant(when: datetime) -> str:
    """Event timestamps: ISO 8601 in UTC, whatever offset the value arrived with."""
    return when.astimezone(UTC).isoformat()
