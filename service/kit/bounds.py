"""Bounds on every date and instant the API accepts: a value out of them is a 422, never a 500.

Two windows. The absolute one (``EARLIEST``..``LATEST``) holds for every date and instant
anywhere in the API and is enforced while parsing, by the annotated types below: a year-1 or
year-9999 value never reaches Python date arithmetic or PostgreSQL (where 9999-12-31 becomes
``infinity``). Rules about the present add a window relative to the injected clock, checked by
the service with ``check_day`` (e.g. a pushed session's date, ``service_date_window``). Both
answer with the code ``date_out_of_range`` naming the field. See docs/input-bounds.md.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime
from pydantic_core import PydanticCustomError

from service.kit.clock import instant
from service.kit.errors import Unprocessable

CODE = "date_out_of_range"
EARLIEST = date(2000, 1, 1)
LATEST = date(2100, 12, 31)
EARLIEST_INSTANT = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_INSTANT = datetime(2100, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)

# A pushed session is about now: from a year back (late corrections) to two years ahead.
SERVICE_DAYS_BACK = 366
SERVICE_DAYS_AHEAD = 731


def day_in_window(value: date) -> bool:
    return EARLIEST <= value <= LATEST


def instant_in_window(value: datetime) -> bool:
    """Whether ``value`` lies in the absolute window; a naive value is read as UTC.

    The year is checked first: comparing an aware year-1 or year-9999 value converts it to
    UTC, which overflows. A year strictly inside the window needs no comparison at all (no UTC
    offset moves an instant by a day), and converting an offset costs more than the rest of
    parsing a datetime.
    """
    if EARLIEST.year < value.year < LATEST.year:
        return True
    if not EARLIEST.year - 1 <= value.year <= LATEST.year + 1:
        return False
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return EARLIEST_INSTANT <= aware <= LATEST_INSTANT


def _window_error() -> PydanticCustomError:
    return PydanticCustomError(
        CODE,
        "Must be between {earliest} and {latest}.",
        {"earliest": EARLIEST.isoformat(), "latest": LATEST.isoformat()},
    )


def _bounded_day(value: date) -> date:
    if not day_in_window(value):
        raise _window_error()
    return value


def _bounded_instant(value: datetime) -> datetime:
    if not instant_in_window(value):
        raise _window_error()
    return value


_INSIDE_YEARS = range(EARLIEST.year + 1, LATEST.year)  # instant_in_window's first answer, at C speed


def _bounded_utc_instant(value: datetime) -> datetime:
    if value.year not in _INSIDE_YEARS and not instant_in_window(value):
        raise _window_error()
    return value.astimezone(UTC)


Day = Annotated[date, AfterValidator(_bounded_day)]
"""A calendar date within the absolute window."""

Instant = Annotated[AwareDatetime, AfterValidator(_bounded_instant)]
"""An instant with a UTC offset, within the absolute window."""

UtcInstant = Annotated[AwareDatetime, AfterValidator(_bounded_utc_instant)]
"""An ``Instant`` converted to UTC as it is parsed: for instants that are only compared and stored
(a push's 10,000 slots), whose offsets would otherwise be converted again at every comparison."""

QueryInstant = Annotated[datetime, AfterValidator(_bounded_instant)]
"""An instant within the absolute window whose offset the route itself insists on, with its own code."""


def _written(value: date | datetime) -> str:
    """A day as YYYY-MM-DD, an instant in the one time format."""
    return instant(value) if isinstance(value, datetime) else value.isoformat()


class DateOutOfRange(Unprocessable):
    """A date or instant outside the window its field allows."""

    def __init__(self, field: str, earliest: date | datetime, latest: date | datetime) -> None:
        super().__init__(
            CODE,
            f"'{field}' must be between {_written(earliest)} and {_written(latest)}.",
            field=field,
            earliest=_written(earliest),
            latest=_written(latest),
        )


def check_day(field: str, value: date, *, earliest: date, latest: date) -> None:
    """Refuse ``value`` outside [earliest, latest] with ``date_out_of_range`` naming ``field``."""
    if not earliest <= value <= latest:
        raise DateOutOfRange(field, earliest, latest)


def check_instant(field: str, value: datetime) -> None:
    """Refuse an instant outside the absolute window, for values parsed by hand (FHIR, cursors)."""
    if not instant_in_window(value):
        raise DateOutOfRange(field, EARLIEST_INSTANT, LATEST_INSTANT)


def service_date_window(today: date) -> tuple[date, date]:
    """The service dates a push may name today: a year back to two years ahead."""
    return today - timedelta(days=SERVICE_DAYS_BACK), today + timedelta(days=SERVICE_DAYS_AHEAD)
