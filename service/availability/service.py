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
class Availability:
    """The answer's parts as JSON text, built by PostgreSQL: arrays of hospitals, items, department-days."""

    hospitals: str
    items: str
    replaces: str | None  # None without since: the whole window is replaced
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
# PostgreSQL renders the JSON (row_to_json is compact and keeps column order), so a poll costs
# the aggregation of the window's count rows and little Python.
_READ = """
WITH scope AS (
    SELECT c.* FROM availability_counts c
    WHERE c.hospital_id = ANY(ARRAY(
              SELECT id FROM organisations WHERE kind = 'hospital' AND region_code LIKE :prefix))
      AND c.service_date BETWEEN :date_from AND :date_to{filters}
){since},
grouped AS (
    SELECT s.hospital_id, s.department_id, s.service_date, s.period, s.doctor_title,
           sum(s.public) AS public,
           coalesce(sum(s.reserved) FILTER (WHERE :now < s.pool_opens_at), 0) AS pool_pending,
           coalesce(sum(s.reserved) FILTER (WHERE s.pool_opens_at <= :now AND :now < s.public_at), 0)
               AS pool_open,
           sum(s.booked) AS booked,
           sum(s.returned) + coalesce(sum(s.reserved) FILTER (WHERE s.public_at <= :now), 0) AS returned
    FROM scope s{only_changed}
    GROUP BY s.hospital_id, s.department_id, s.service_date, s.period, s.doctor_title
    HAVING sum(s.public + s.reserved + s.booked + s.returned) > 0
),
mentioned AS (
    SELECT DISTINCT hospital_id, department_id FROM {mentioned}
)
SELECT pg_current_snapshot()::text AS snapshot,
    (SELECT coalesce(string_agg(row_to_json(h)::text, ',' ORDER BY h.id), '') FROM (
        SELECT o.id, o.code, o.name, o.region_code,
               (SELECT json_agg(row_to_json(x) ORDER BY x.code) FROM (
                    SELECT d.code, d.name FROM mentioned m JOIN departments d ON d.id = m.department_id
                    WHERE m.hospital_id = o.id) AS x) AS departments
        FROM organisations o WHERE o.id IN (SELECT hospital_id FROM mentioned)) AS h
    ) AS hospitals,
    (SELECT coalesce(string_agg(row_to_json(i)::text, ',' ORDER BY i.hospital_id, i.department_code,
                                i.service_date, array_position(ARRAY['morning', 'afternoon', 'evening'],
                                                               i.period::text),
                                array_position(ARRAY['chief', 'associate_chief', 'attending', 'resident'],
                                               i.doctor_title::text)), '') FROM (
        SELECT g.hospital_id, d.code AS department_code, g.service_date, g.period, g.doctor_title,
               g.public, g.pool_pending, g.pool_open, g.booked, g.returned
        FROM grouped g JOIN departments d ON d.id = g.department_id) AS i
    ) AS items{replaces}
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
_ONLY_CHANGED = "\n    WHERE (s.hospital_id, s.department_id, s.service_date) IN (SELECT * FROM changed)"
_REPLACES = """,
    (SELECT coalesce(string_agg(row_to_json(r)::text, ',' ORDER BY r.hospital_id, r.department_code,
                                r.service_date), '') FROM (
        SELECT ch.hospital_id, d.code AS department_code, ch.service_date
        FROM changed ch JOIN departments d ON d.id = ch.department_id) AS r
    ) AS replaces"""


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
        mentioned="(SELECT hospital_id, department_id FROM grouped UNION ALL "
        "SELECT hospital_id, department_id FROM changed) AS both_"
        if since
        else "grouped",
        replaces=_REPLACES if since else "",
    )
    row = (await session.execute(text(sql), params)).one()
    return Availability(
        hospitals=row.hospitals,
        items=row.items,
        replaces=row.replaces if since is not None else None,
        cursor=Cursor(snapshot=row.snapshot, as_of=now),
    )
