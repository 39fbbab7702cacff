"""Aggregated availability for platforms: counts per hospital, department, date, period and title.

Reads ``availability_counts`` (one row per session and pool window, kept by
triggers) in one statement, so in one snapshot; splits reserved slots by the clock
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


# One statement, so one snapshot: the counts and the cursor handed out with them always agree.
_READ = """
WITH scope AS (
    SELECT c.* FROM availability_counts c
    JOIN organisations o ON o.id = c.hospital_id
    WHERE o.kind = 'hospital' AND o.region_code LIKE :prefix
      AND c.service_date BETWEEN :date_from AND :date_to{filters}
){since},
grouped AS (
    SELECT s.hospital_id, s.department_id, s.service_date, cs.period::text AS period,
           cs.doctor_title::text AS doctor_title,
           sum(s.public) AS public,
           coalesce(sum(s.reserved) FILTER (WHERE :now < s.pool_opens_at), 0) AS pool_pending,
           coalesce(sum(s.reserved) FILTER (WHERE s.pool_opens_at <= :now AND :now < s.public_at), 0)
               AS pool_open,
           sum(s.booked) AS booked,
           sum(s.returned) + coalesce(sum(s.reserved) FILTER (WHERE s.public_at <= :now), 0) AS returned
    FROM scope s
    JOIN clinic_sessions cs ON cs.id = s.session_id
    {only_changed}
    GROUP BY s.hospital_id, s.department_id, s.service_date, cs.period, cs.doctor_title
    HAVING sum(s.public + s.reserved + s.booked + s.returned) > 0
),
found AS (
    SELECT 'group' AS kind, * FROM grouped{replaced}
)
SELECT snap.snapshot, f.kind, f.hospital_id, o.code AS hospital_code, o.name AS hospital_name,
       o.region_code, d.code AS department_code, d.name AS department_name, f.service_date,
       f.period, f.doctor_title, f.public, f.pool_pending, f.pool_open, f.booked, f.returned
FROM (SELECT pg_current_snapshot()::text AS snapshot) AS snap
LEFT JOIN (found f
           JOIN organisations o ON o.id = f.hospital_id
           JOIN departments d ON d.id = f.department_id) ON true
ORDER BY f.kind, f.hospital_id, d.code, f.service_date,
         array_position(ARRAY['morning', 'afternoon', 'evening'], f.period),
         array_position(ARRAY['chief', 'associate_chief', 'attending', 'resident'], f.doctor_title)
"""

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
_ONLY_CHANGED = "WHERE (s.hospital_id, s.department_id, s.service_date) IN (SELECT * FROM changed)"
_REPLACED = """
    UNION ALL
    SELECT 'replaced', hospital_id, department_id, service_date, NULL, NULL, NULL, NULL, NULL, NULL, NULL
    FROM changed"""


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
    params: dict[str, object] = {
        "prefix": significant_prefix(region) + "%",
        "date_from": date_from,
        "date_to": date_to,
        "now": now,
    }
    filters = ""
    if hospital_id is not None:
        filters += "\n      AND c.hospital_id = :hospital_id"
        params["hospital_id"] = hospital_id
    if department_code is not None:
        filters += "\n      AND c.department_id IN (SELECT id FROM departments WHERE code = :department_code)"
        params["department_code"] = department_code
    if since is not None:
        params["since_snapshot"] = since.snapshot
        params["since_as_of"] = since.as_of
    sql = _READ.format(
        filters=filters,
        since=_CHANGED if since else "",
        only_changed=_ONLY_CHANGED if since else "",
        replaced=_REPLACED if since else "",
    )
    hospitals: dict[int, Hospital] = {}
    groups: list[Group] = []
    replaced: list[DepartmentDay] | None = [] if since is not None else None
    snapshot = ""
    for r in await session.execute(text(sql), params):
        snapshot = r.snapshot
        if r.kind is None:
            continue
        if r.hospital_id not in hospitals:
            hospitals[r.hospital_id] = Hospital(
                r.hospital_id, r.hospital_code, r.hospital_name, r.region_code
            )
        if r.kind == "group":
            groups.append(
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
            )
        elif replaced is not None:
            replaced.append(
                DepartmentDay(r.hospital_id, r.department_code, r.department_name, r.service_date)
            )
    return Availability(
        hospitals=sorted(hospitals.values(), key=lambda h: h.id),
        groups=groups,
        replaced=replaced,
        cursor=Cursor(snapshot=snapshot, as_of=now),
    )
