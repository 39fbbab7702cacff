"""Aggregated availability for platforms: counts per hospital, department, date, period and title.

Reads ``availability_counts`` (one row per session and pool window, kept by
triggers) in one REPEATABLE READ snapshot, splits reserved slots by the clock
into pending / pool-open / returned, and hands out the snapshot as a cursor so
the next poll can ask for what changed since. See docs/availability.md.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from service.errors import Unprocessable
from service.regions import significant_prefix

_SNAPSHOT = re.compile(r"[0-9]{1,20}:[0-9]{1,20}:([0-9]{1,20}(,[0-9]{1,20})*)?")
MAX_DAYS = 7  # the widest span one query may cover: one city, one week
PERIOD_ORDER = "ARRAY['morning', 'afternoon', 'evening']::text[]"
TITLE_ORDER = "ARRAY['chief', 'associate_chief', 'attending', 'resident']::text[]"


@dataclass(frozen=True)
class Cursor:
    """Where a poll stood: its snapshot (``xmin:xmax:xip,...``) and its clock reading."""

    snapshot: str
    as_of: datetime

    def encode(self) -> str:
        micros = int(self.as_of.timestamp() * 1_000_000)
        raw = f"2/{self.snapshot}/{micros}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
            version, snapshot, micros = raw.split("/")
            if version != "2" or not _SNAPSHOT.fullmatch(snapshot) or not micros.isdigit():
                raise ValueError(raw)
            as_of = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(micros))
            return cls(snapshot=snapshot, as_of=as_of)
        except (ValueError, UnicodeDecodeError, binascii.Error, OverflowError):
            raise Unprocessable(
                "invalid_cursor", "The since cursor is not one this service handed out."
            ) from None


@dataclass(frozen=True)
class Hospital:
    id: int
    code: str
    name: str
    region_code: str


@dataclass(frozen=True)
class Group:
    hospital_id: int
    department_code: str
    department_name: str
    service_date: date
    period: str
    doctor_title: str
    public: int
    pool_pending: int
    pool_open: int
    booked: int
    returned: int


@dataclass(frozen=True)
class DepartmentDay:
    hospital_id: int
    department_code: str
    department_name: str
    service_date: date


@dataclass(frozen=True)
class Availability:
    hospitals: list[Hospital]
    groups: list[Group]
    replaced: list[DepartmentDay] | None  # None: the whole window is replaced
    cursor: Cursor


def check_window(region: str, date_from: date, date_to: date) -> None:
    """Refuse queries wider than one city and one week, so every answer stays bounded."""
    if region.endswith("0000"):
        raise Unprocessable("region_too_wide", "Query one city or county at a time, not a whole province.")
    if date_to < date_from:
        raise Unprocessable("invalid_date_range", "'to' is before 'from'.")
    if (date_to - date_from).days + 1 > MAX_DAYS:
        raise Unprocessable(
            "date_range_too_wide", f"Query at most {MAX_DAYS} days at a time.", max_days=MAX_DAYS
        )


_SCOPE = """
    scope AS (
        SELECT c.* FROM availability_counts c
        WHERE c.hospital_id = ANY(:hospital_ids) AND c.service_date BETWEEN :date_from AND :date_to
    )"""

# A department-day changed after the cursor when a transaction the cursor's snapshot could not see
# wrote one of its rows, or when a pool window of a reserved slot opened or closed in between.
# Rows keep only their last writer's ID, which is enough: a row's writers commit in turn (row
# locks), so if any of them was invisible to the snapshot, the last one is too.
_CHANGED = """,
    since AS (SELECT CAST(CAST(:since_snapshot AS text) AS pg_snapshot) AS snapshot),
    changed AS (
        SELECT DISTINCT hospital_id, department_id, service_date FROM scope, since
        WHERE (changed_xid >= pg_snapshot_xmin(since.snapshot)
               AND NOT pg_visible_in_snapshot(changed_xid, since.snapshot))
           OR (reserved > 0 AND (pool_opens_at > :since_as_of AND pool_opens_at <= :now
                                 OR public_at > :since_as_of AND public_at <= :now))
    )"""

_GROUPS = """
    SELECT s.hospital_id, d.code AS department_code, d.name AS department_name, s.service_date,
           cs.period, cs.doctor_title,
           sum(s.public) AS public,
           coalesce(sum(s.reserved) FILTER (WHERE :now < s.pool_opens_at), 0) AS pool_pending,
           coalesce(sum(s.reserved) FILTER (WHERE s.pool_opens_at <= :now AND :now < s.public_at), 0)
               AS pool_open,
           sum(s.booked) AS booked,
           sum(s.returned) + coalesce(sum(s.reserved) FILTER (WHERE s.public_at <= :now), 0) AS returned
    FROM scope s
    JOIN clinic_sessions cs ON cs.id = s.session_id
    JOIN departments d ON d.id = s.department_id
    WHERE {where}
    GROUP BY s.hospital_id, d.id, s.service_date, cs.period, cs.doctor_title
    HAVING sum(s.public + s.reserved + s.booked + s.returned) > 0
    ORDER BY s.hospital_id, d.code, s.service_date,
             array_position({periods}, cs.period::text), array_position({titles}, cs.doctor_title::text)
"""

_REPLACED = """
    SELECT ch.hospital_id, d.code AS department_code, d.name AS department_name, ch.service_date
    FROM changed ch JOIN departments d ON d.id = ch.department_id
    WHERE {where}
    ORDER BY ch.hospital_id, d.code, ch.service_date
"""


async def read_availability(
    *,
    session: AsyncSession,
    now: datetime,
    region: str,
    date_from: date,
    date_to: date,
    hospital_id: int | None = None,
    department_code: str | None = None,
    since: Cursor | None = None,
) -> Availability:
    """The counts of a region's hospitals over a date window, or only what changed after ``since``."""
    # One snapshot for every statement below, so the cursor is exactly what was read.
    await session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
    hospital_rows = (
        await session.execute(
            text(
                "SELECT id, code, name, region_code FROM organisations "
                "WHERE kind = 'hospital' AND region_code LIKE :prefix "
                "AND (CAST(:hospital_id AS bigint) IS NULL OR id = :hospital_id) ORDER BY id"
            ),
            {"prefix": significant_prefix(region) + "%", "hospital_id": hospital_id},
        )
    ).all()
    hospitals = {row.id: Hospital(row.id, row.code, row.name, row.region_code) for row in hospital_rows}
    snapshot = (await session.execute(text("SELECT pg_current_snapshot()::text"))).scalar_one()
    cursor = Cursor(snapshot=snapshot, as_of=now)
    params: dict[str, object] = {
        "hospital_ids": list(hospitals),
        "date_from": date_from,
        "date_to": date_to,
        "now": now,
    }
    where = ["true"]
    if department_code is not None:
        where.append("d.code = :department_code")
        params["department_code"] = department_code
    ctes = _SCOPE
    if since is not None:
        ctes += _CHANGED
        params["since_snapshot"] = since.snapshot
        params["since_as_of"] = since.as_of
    group_where = list(where)
    if since is not None:
        group_where.append("(s.hospital_id, s.department_id, s.service_date) IN (SELECT * FROM changed)")
    groups_sql = (
        "WITH"
        + ctes
        + _GROUPS.format(where=" AND ".join(group_where), periods=PERIOD_ORDER, titles=TITLE_ORDER)
    )
    groups = [
        Group(
            hospital_id=r.hospital_id,
            department_code=r.department_code,
            department_name=r.department_name,
            service_date=r.service_date,
            period=r.period,
            doctor_title=r.doctor_title,
            public=r.public,
            pool_pending=r.pool_pending,
            pool_open=r.pool_open,
            booked=r.booked,
            returned=r.returned,
        )
        for r in await session.execute(text(groups_sql), params)
    ]
    replaced = None
    if since is not None:
        replaced_sql = "WITH" + ctes + _REPLACED.format(where=" AND ".join(where))
        replaced = [
            DepartmentDay(r.hospital_id, r.department_code, r.department_name, r.service_date)
            for r in await session.execute(text(replaced_sql), params)
        ]
    return Availability(hospitals=list(hospitals.values()), groups=groups, replaced=replaced, cursor=cursor)
