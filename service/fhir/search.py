"""FHIR search parameters: date prefixes, references, token lists, ``_count`` and the paging cursor."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_

from service.fhir import resources
from service.kit.bounds import EARLIEST, LATEST, check_day, check_instant
from service.kit.clock import SHANGHAI
from service.kit.cursors import decode_id_cursor
from service.kit.errors import Problem, Unprocessable
from service.kit.ids import MAX_ID
from service.kit.resources import MODALITIES, RESOURCE_KINDS

DEFAULT_COUNT = 50
MAX_COUNT = 500
_DATE_PARAM = re.compile(r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)?(\d{4}(-\d{2}(-\d{2})?)?)(T.*)?$")


class BadSearch(Problem):
    """A search the server cannot run: FHIR answers 400 with an OperationOutcome."""

    status = 400


@dataclass(frozen=True)
class DateBound:
    """``prefix`` applied to the half-open range [lower, upper) the value denotes."""

    prefix: str
    lower: datetime
    upper: datetime

    def clause(self, column: Any) -> ColumnElement[bool]:
        """Compare an instant column with the range, as the FHIR prefixes define it."""
        if self.prefix == "eq":
            return and_(column >= self.lower, column < self.upper)
        if self.prefix == "ge":
            return column >= self.lower  # type: ignore[no-any-return]
        if self.prefix == "gt":
            return column >= self.upper  # type: ignore[no-any-return]
        if self.prefix == "le":
            return column < self.upper  # type: ignore[no-any-return]
        return column < self.lower  # type: ignore[no-any-return]

    def overlaps(self, start: Any, end: Any) -> ColumnElement[bool]:
        """Compare a period [start, end) with the range: it intersects the range the prefix names."""
        if self.prefix == "eq":
            return and_(start < self.upper, end > self.lower)
        if self.prefix == "ge":
            return end > self.lower  # type: ignore[no-any-return]
        if self.prefix == "gt":
            return end > self.upper  # type: ignore[no-any-return]
        if self.prefix == "le":
            return start < self.upper  # type: ignore[no-any-return]
        return start < self.lower  # type: ignore[no-any-return]


def parse_date(name: str, value: str) -> DateBound:
    """``ge2026-03-10``, ``lt2026-03-10T12:00:00+08:00``, ``2026-03``...; no offset means Beijing time."""
    match = _DATE_PARAM.match(value)
    if not match:
        raise BadSearch("invalid_search_parameter", f"{name}={value!r} is not a FHIR date search value.")
    prefix = match.group(1) or "eq"
    if prefix not in ("eq", "gt", "lt", "ge", "le"):
        raise BadSearch("unsupported_search_prefix", f"{name}: the prefix {prefix!r} is not supported.")
    text = value[len(match.group(1) or "") :]
    try:
        if match.group(5):
            lower = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if lower.tzinfo is None:
                lower = lower.replace(tzinfo=SHANGHAI)
            check_instant(name, lower)
            # An instant names itself; the next microsecond closes the range, as PostgreSQL counts.
            return DateBound(prefix, lower, lower + timedelta(microseconds=1))
        parts = [int(p) for p in match.group(2).split("-")]
        year, month, day = parts[0], parts[1] if len(parts) > 1 else 1, parts[2] if len(parts) > 2 else 1
        first = date(year, month, day)
        check_day(name, first, earliest=EARLIEST, latest=LATEST)
        if len(parts) == 3:
            last = first + timedelta(days=1)
        elif len(parts) == 2:
            last = date(year + month // 12, month % 12 + 1, 1)
        else:
            last = date(year + 1, 1, 1)
    except (ValueError, OverflowError) as exc:
        raise BadSearch("invalid_search_parameter", f"{name}={value!r} is not a valid date.") from exc
    return DateBound(
        prefix,
        datetime(first.year, first.month, first.day, tzinfo=SHANGHAI),
        datetime(last.year, last.month, last.day, tzinfo=SHANGHAI),
    )


def date_clauses(name: str, values: Sequence[str], column: Any) -> list[ColumnElement[bool]]:
    """Repeated date parameters are ANDed: ``start=ge…&start=le…`` is a range."""
    return [parse_date(name, v).clause(column) for v in values]


def parse_reference(name: str, value: str, resource_type: str) -> int:
    """``Schedule/12``, or a bare ``12``, to the database id."""
    kind, local = resource_type, value
    if "/" in value:
        path, _, local = value.rpartition("/")
        kind = path.rsplit("/", 1)[-1]  # absolute references end in Type/id too
    if kind != resource_type or not local.isascii() or not local.isdigit() or not 0 < int(local) <= MAX_ID:
        raise BadSearch("invalid_search_parameter", f"{name}={value!r} is not a {resource_type} reference.")
    return int(local)


def parse_tokens(name: str, value: str | None, allowed: Sequence[str]) -> list[str] | None:
    """A comma-separated token list (an OR), each from ``allowed``."""
    if value is None:
        return None
    tokens = [t.strip() for t in value.split(",")]
    unknown = [t for t in tokens if t not in allowed]
    if unknown:
        raise BadSearch(
            "invalid_search_parameter", f"{name}: {', '.join(unknown)} not one of {', '.join(allowed)}."
        )
    return tokens


def decode_cursor(cursor: str | None) -> int | None:
    """The id the previous page ended on; a cursor this service did not issue is a FHIR 400."""
    try:
        return decode_id_cursor(cursor)
    except Unprocessable:
        raise BadSearch("invalid_cursor", "The _cursor value is not one this server issued.") from None


def parse_service_types(name: str, values: Sequence[str] | None) -> list[tuple[str, str | None]] | None:
    """``service-type`` tokens to the services (kind, modality) whose serviceType carries them.

    A token is ``code`` or ``system|code``, matched against the kind and modality codings a
    Slot or Schedule shows (``resources.service_codings``), so that the search and what is shown
    are one table. Commas are an OR, a repeated parameter an AND. A token no service carries is
    refused, as a typo ("mri") would otherwise silently find nothing.
    """
    if not values:
        return None
    matched = set(resources.SERVICES)
    for value in values:
        either: set[tuple[str, str | None]] = set()
        for token in (t.strip() for t in value.split(",")):
            system, bar, code = token.rpartition("|")
            hits = {
                service
                for service in resources.SERVICES
                if any(c == code and (not bar or s == system) for s, c in resources.service_codings(*service))
            }
            if not hits:
                raise BadSearch(
                    "invalid_search_parameter",
                    f"{name}: {token!r} names no service offered here; use a resource kind "
                    f"({', '.join(RESOURCE_KINDS)}) or a modality ({', '.join(MODALITIES)}).",
                )
            either |= hits
        matched &= either
    return [service for service in resources.SERVICES if service in matched]
