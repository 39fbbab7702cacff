"""Aggregated availability for platforms: counts per hospital, department, date, period and kind,
and within the kind per doctor title (visits), modality (examinations) or ward (beds).

Reads ``availability_counts`` (one row per session and pool window, kept by
triggers), splits reserved slots by the clock into pending / pool-open /
returned, and hands out the reader's snapshot as a cursor so the next poll can
ask for what changed since. A full window is assembled from per hospital-day
fragments cached by a digest of their rows; see docs/availability.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.clock import local_date
from service.kit.errors import Unprocessable
from service.kit.regions import significant_prefix
from service.kit.resources import MODALITIES, RESOURCE_KINDS

_SNAPSHOT = re.compile(r"[0-9]{1,20}:[0-9]{1,20}:([0-9]{1,20}(,[0-9]{1,20})*)?")
MAX_DAYS = 7  # the widest span one query may cover: one city, one week


def _array(values: tuple[str, ...]) -> str:
    """A SQL text array literal of known, quote-free values: the order items are sorted in."""
    return "ARRAY[" + ", ".join(f"'{v}'" for v in values) + "]"


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
    """The answer's parts as JSON text: the contents of the hospitals, items and replaces arrays."""

    hospitals: str
    items: str
    replaces: str | None  # None without since: the whole window is replaced
    cursor: Cursor
    waiting_lists: str = ""  # the contents of the waiting_lists array


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


# The scope of a query: the region's hospitals, the date window, and the optional filters.
_SCOPE = """
    SELECT c.* FROM availability_counts c
    WHERE c.hospital_id = ANY(ARRAY(
              SELECT id FROM organisations WHERE kind = 'hospital' AND region_code LIKE :prefix))
      AND c.service_date BETWEEN :date_from AND :date_to{filters}"""

# Counts per group; the pool window of each row is applied with the clock reading :now. A group is
# a hospital, department, date, period and kind, and within the kind a doctor title (visits), a
# modality (examinations) or a ward (beds): the other two are NULL in the count rows. Sessions of
# one ward normally agree on its name; if they do not, the first name is shown.
_GROUPED = """
    SELECT s.hospital_id, s.department_id, s.service_date, s.period, s.resource_kind, s.doctor_title,
           s.modality, s.ward_code, min(s.ward_name) AS ward_name,
           sum(s.public) AS public,
           coalesce(sum(s.reserved) FILTER (WHERE :now < s.pool_opens_at), 0) AS pool_pending,
           coalesce(sum(s.reserved) FILTER (WHERE s.pool_opens_at <= :now AND :now < s.public_at), 0)
               AS pool_open,
           sum(s.booked) AS booked,
           sum(s.returned) + coalesce(sum(s.reserved) FILTER (WHERE s.public_at <= :now), 0) AS returned
    FROM scope s{where}
    GROUP BY s.hospital_id, s.department_id, s.service_date, s.period, s.resource_kind, s.doctor_title,
             s.modality, s.ward_code
    HAVING sum(s.public + s.reserved + s.booked + s.returned) > 0"""

# Items in the order of the answer: hospital, date, department, period, kind, then title (chief
# first), modality (in the list's order) or ward code. row_to_json is compact and keeps column
# order, so PostgreSQL renders each item once.
_ITEMS = f"""
    SELECT g.hospital_id, g.service_date, d.code AS department_code, d.name AS department_name,
           o.code AS hospital_code, o.name AS hospital_name, o.region_code,
           row_to_json(i)::text AS item,
           row_number() OVER (ORDER BY g.hospital_id, g.service_date, d.code,
                              array_position(ARRAY['morning', 'afternoon', 'evening'], g.period::text),
                              array_position({_array(RESOURCE_KINDS)}, g.resource_kind::text),
                              array_position(ARRAY['chief', 'associate_chief', 'attending', 'resident'],
                                             g.doctor_title::text),
                              array_position({_array(MODALITIES)}, g.modality::text),
                              g.ward_code) AS position
    FROM grouped g
    JOIN departments d ON d.id = g.department_id
    JOIN organisations o ON o.id = g.hospital_id
    CROSS JOIN LATERAL (
        SELECT g.hospital_id, d.code AS department_code, g.service_date, g.period, g.resource_kind,
               g.doctor_title, g.modality,
               CASE WHEN g.ward_code IS NOT NULL
                    THEN json_build_object('code', g.ward_code, 'name', g.ward_name) END AS ward,
               g.public, g.pool_pending, g.pool_open, g.booked, g.returned
    ) AS i"""

# A hospital-day's digest changes whenever anything its fragment shows could: a count row's
# writer (every write stamps the row with its transaction ID, the session trigger's copy of
# period, title, modality and ward included), the set of rows, which side of each pool window
# the clock is on, and the names shown. It is a sum of 64-bit hashes, one per row, so no text of
# the rows is built: about 1 ms for a city-week.
_DIGESTS = """
WITH scope AS ({scope})
SELECT snap.snapshot, f.hospital_id, f.service_date,
       concat_ws(':', f.rows, f.writers, f.opened, f.closed, names.digest) AS digest
FROM (SELECT pg_current_snapshot()::text AS snapshot) AS snap
LEFT JOIN (
    SELECT s.hospital_id, s.service_date, count(*) AS rows,
           sum(hashtextextended(concat_ws(':', s.session_id, s.pool_opens_at, s.public_at, s.changed_xid), 0))
               AS writers,
           count(*) FILTER (WHERE s.pool_opens_at <= :now) AS opened,
           count(*) FILTER (WHERE s.public_at <= :now) AS closed
    FROM scope s
    GROUP BY s.hospital_id, s.service_date
) AS f ON true
LEFT JOIN LATERAL (
    SELECT sum(hashtextextended(concat_ws(':', d.code, d.name), 0))
           + hashtextextended(concat_ws(':', o.code, o.name, o.region_code), 0) AS digest
    FROM organisations o LEFT JOIN departments d ON d.hospital_id = o.id
    WHERE o.id = f.hospital_id
    GROUP BY o.id
) AS names ON true
ORDER BY f.hospital_id, f.service_date
"""

_FRAGMENTS = """
WITH scope AS ({scope}
      AND (c.hospital_id, c.service_date) IN (
          SELECT * FROM unnest(CAST(:missing_hospitals AS bigint[]), CAST(:missing_dates AS date[])))
),
grouped AS ({grouped})
SELECT * FROM ({items}) AS items ORDER BY position
"""

# A department-day changed after the cursor when a transaction the cursor's snapshot could not see
# wrote one of its rows, or when a pool window of a reserved slot opened or closed in between.
# Rows keep only their last writer's ID, which is enough: a row's writers commit in turn (row
# locks), so if any of them was invisible to the snapshot, the last one is too.
_CHANGES = """
WITH scope AS ({scope}),
since AS (SELECT CAST(CAST(:since_snapshot AS text) AS pg_snapshot) AS snapshot),
changed AS (
    SELECT DISTINCT hospital_id, department_id, service_date FROM scope, since
    WHERE (changed_xid >= pg_snapshot_xmin(since.snapshot)
           AND NOT pg_visible_in_snapshot(changed_xid, since.snapshot))
       OR (reserved > 0 AND (pool_opens_at > :since_as_of AND pool_opens_at <= :now
                             OR public_at > :since_as_of AND public_at <= :now))
),
grouped AS ({grouped}),
items AS ({items})
SELECT snap.snapshot, x.*
FROM (SELECT pg_current_snapshot()::text AS snapshot) AS snap
LEFT JOIN (
    SELECT 'item' AS kind, hospital_id, service_date, department_code, department_name,
           hospital_code, hospital_name, region_code, item, position
    FROM items
    UNION ALL
    SELECT 'replaced', ch.hospital_id, ch.service_date, d.code, d.name, o.code, o.name, o.region_code,
           (SELECT row_to_json(r)::text
            FROM (SELECT ch.hospital_id, d.code AS department_code, ch.service_date) AS r),
           0
    FROM changed ch
    JOIN departments d ON d.id = ch.department_id
    JOIN organisations o ON o.id = ch.hospital_id
) AS x ON true
ORDER BY x.kind, x.position, x.hospital_id, x.service_date, x.department_code
"""


@dataclass(frozen=True)
class Fragment:
    """The rendered items of one hospital-day, and what the hospitals list needs from it."""

    hospital: tuple[str, str, str]  # code, name, region_code
    departments: tuple[tuple[str, str], ...]  # (code, name)
    items: str  # comma-separated JSON objects, possibly empty


# A hospital-day under one set of the query's filters (department code, resource kind, modality):
# the same hospital-day filtered otherwise is another fragment.
FragmentKey = tuple[int, date, tuple[str | None, ...]]


class FragmentCache:
    """Rendered hospital-days by digest, least recently used first out. One per app."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[FragmentKey, tuple[str, Fragment]] = OrderedDict()

    def get(self, key: FragmentKey, digest: str) -> Fragment | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] != digest:
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: FragmentKey, digest: str, fragment: Fragment) -> None:
        self._entries[key] = (digest, fragment)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


@dataclass(frozen=True)
class Window:
    """What a query asks for, and the clock reading it is answered at."""

    now: datetime
    region: str
    date_from: date
    date_to: date
    hospital_id: int | None = None
    department_code: str | None = None
    resource_kind: str | None = None
    modality: str | None = None

    @property
    def filters(self) -> tuple[str | None, ...]:
        """The filters a hospital-day's fragment depends on (the hospital is in its key already)."""
        return (self.department_code, self.resource_kind, self.modality)


def _params(w: Window) -> tuple[dict[str, object], str]:
    params: dict[str, object] = {
        "prefix": significant_prefix(w.region) + "%",
        "date_from": w.date_from,
        "date_to": w.date_to,
        "now": w.now,
    }
    filters = ""
    if w.hospital_id is not None:
        filters += "\n      AND c.hospital_id = :hospital_id"
        params["hospital_id"] = w.hospital_id
    if w.department_code is not None:
        filters += "\n      AND c.department_id IN (SELECT id FROM departments WHERE code = :department_code)"
        params["department_code"] = w.department_code
    if w.resource_kind is not None:
        filters += "\n      AND c.resource_kind = :resource_kind"
        params["resource_kind"] = w.resource_kind
    if w.modality is not None:
        filters += "\n      AND c.modality = :modality"
        params["modality"] = w.modality
    return params, _SCOPE.format(filters=filters)


def _hospitals_json(parts: dict[int, tuple[tuple[str, str, str], dict[str, str]]]) -> str:
    return ",".join(
        json.dumps(
            {
                "id": hospital_id,
                "code": code,
                "name": name,
                "region_code": region_code,
                "departments": [{"code": c, "name": n} for c, n in sorted(departments.items())],
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )
        for hospital_id, ((code, name, region_code), departments) in sorted(parts.items())
    )


async def read_window(*, session: AsyncSession, window: Window, cache: FragmentCache) -> Availability:
    """Every group of a region's hospitals over a date window.

    The session must be in a REPEATABLE READ transaction: the digests, the fragments
    rendered for the missing ones, and the cursor all come from one snapshot.
    """
    params, scope = _params(window)
    filters = window.filters
    rows = (await session.execute(text(_DIGESTS.format(scope=scope)), params)).all()
    snapshot = rows[0].snapshot
    digests = {(r.hospital_id, r.service_date): r.digest for r in rows if r.hospital_id is not None}
    fragments: dict[tuple[int, date], Fragment] = {}
    for (h, day), digest in digests.items():
        cached = cache.get((h, day, filters), digest)
        if cached is not None:
            fragments[h, day] = cached
    missing = [key for key in digests if key not in fragments]
    if missing:
        params["missing_hospitals"] = [h for h, _ in missing]
        params["missing_dates"] = [day for _, day in missing]
        sql = _FRAGMENTS.format(scope=scope, grouped=_GROUPED.format(where=""), items=_ITEMS)
        rendered: dict[tuple[int, date], tuple[tuple[str, str, str], dict[str, str], list[str]]] = {}
        for r in await session.execute(text(sql), params):
            _, departments, items = rendered.setdefault(
                (r.hospital_id, r.service_date), ((r.hospital_code, r.hospital_name, r.region_code), {}, [])
            )
            departments[r.department_code] = r.department_name
            items.append(r.item)
        for key in missing:
            hospital, departments, items = rendered.get(key, (("", "", ""), {}, []))
            fragment = Fragment(hospital, tuple(sorted(departments.items())), ",".join(items))
            cache.put((key[0], key[1], filters), digests[key], fragment)
            fragments[key] = fragment
    parts: dict[int, tuple[tuple[str, str, str], dict[str, str]]] = {}
    items_json = []
    for (h, _), fragment in sorted(fragments.items()):
        if not fragment.items:
            continue
        items_json.append(fragment.items)
        parts.setdefault(h, (fragment.hospital, {}))[1].update(fragment.departments)
    return Availability(
        hospitals=_hospitals_json(parts),
        items=",".join(items_json),
        replaces=None,
        cursor=Cursor(snapshot=snapshot, as_of=window.now),
    )


async def read_changes(*, session: AsyncSession, window: Window, since: Cursor) -> Availability:
    """The department-days of the window that changed after ``since``, each with all its groups (one
    statement, so one snapshot)."""
    params, scope = _params(window)
    params["since_snapshot"] = since.snapshot
    params["since_as_of"] = since.as_of
    changed_only = "\n    WHERE (s.hospital_id, s.department_id, s.service_date) IN (SELECT * FROM changed)"
    sql = _CHANGES.format(scope=scope, grouped=_GROUPED.format(where=changed_only), items=_ITEMS)
    rows = (await session.execute(text(sql), params)).all()
    parts: dict[int, tuple[tuple[str, str, str], dict[str, str]]] = {}
    items: list[str] = []
    replaced: list[str] = []
    for r in rows:
        if r.kind is None:
            continue
        parts.setdefault(r.hospital_id, ((r.hospital_code, r.hospital_name, r.region_code), {}))[1][
            r.department_code
        ] = r.department_name
        (items if r.kind == "item" else replaced).append(r.item)
    return Availability(
        hospitals=_hospitals_json(parts),
        items=",".join(items),
        replaces=",".join(replaced),
        cursor=Cursor(snapshot=rows[0].snapshot, as_of=window.now),
    )


# Waiting-list lengths (docs/waitlist.md): entries waiting now for a day of the window, counted per
# hospital, department and kind; no personal data. Read whole, with since too: a handful of rows.
_WAITING = """
    SELECT coalesce(string_agg(row_to_json(w)::text, ',' ORDER BY w.hospital_id, w.department_code,
                               w.resource_kind), '')
    FROM (
        SELECT e.hospital_id, d.code AS department_code, e.resource_kind, count(*) AS waiting,
               count(*) FILTER (WHERE e.urgent) AS urgent
        FROM waitlist_entries e
        JOIN departments d ON d.id = e.department_id
        WHERE e.status = 'waiting' AND e.to_date >= :today
          AND e.from_date <= :date_to AND e.to_date >= :date_from
          AND e.hospital_id = ANY(ARRAY(
                  SELECT id FROM organisations WHERE kind = 'hospital' AND region_code LIKE :prefix)){filters}
        GROUP BY e.hospital_id, d.code, e.resource_kind
    ) AS w"""


async def read_waiting_lists(*, session: AsyncSession, window: Window) -> str:
    """The contents of the answer's ``waiting_lists`` array, under the window's filters."""
    params: dict[str, object] = {
        "prefix": significant_prefix(window.region) + "%",
        "date_from": window.date_from,
        "date_to": window.date_to,
        "today": local_date(window.now),
    }
    filters = ""
    if window.hospital_id is not None:
        filters += "\n          AND e.hospital_id = :hospital_id"
        params["hospital_id"] = window.hospital_id
    if window.department_code is not None:
        filters += "\n          AND d.code = :department_code"
        params["department_code"] = window.department_code
    if window.resource_kind is not None:
        filters += "\n          AND e.resource_kind = :resource_kind"
        params["resource_kind"] = window.resource_kind
    if window.modality is not None:
        filters += "\n          AND (e.modality IS NULL OR e.modality = :modality) AND e.resource_kind = 'examination'"
        params["modality"] = window.modality
    return str(await session.scalar(text(_WAITING.format(filters=filters)), params))


async def read(
    *, session: AsyncSession, window: Window, since: Cursor | None, cache: FragmentCache
) -> Availability:
    """The whole window, or with ``since`` what changed in it after that cursor.

    Must be the first statement of its transaction: the whole window's digests, fragments
    and cursor share one snapshot, so it reads at REPEATABLE READ (the changes are one statement).
    """
    if since is not None:
        result = await read_changes(session=session, window=window, since=since)
    else:
        await session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        result = await read_window(session=session, window=window, cache=cache)
    return replace(result, waiting_lists=await read_waiting_lists(session=session, window=window))
