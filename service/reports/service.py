"""Compliance figures aggregated in SQL, per group and period (R1–R4, R6, R20).

One statement answers a report. For the closed days of the range (docs/reports.md, "Closed
days") it reads the summary of revision 0017, one row per hospital (or department), day
and kind; for the other days it reads the clinic sessions, sums their slot counts from
``availability_counts`` (revision 0009) and their referral counts from ``referral_counts``
(revision 0010), and joins the recorded shortfalls, as the live statement ``report_sql``
does for a whole range. Both parts yield cells that are summed and rolled up to the
requested group. Python labels the rows, divides and writes the JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import ARRAY, BigInteger, bindparam, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import BindParameter

from service.kit.errors import Forbidden, NotFound, Unprocessable
from service.kit.regions import covers, within
from service.kit.resources import ResourceKind
from service.models.policy import Policy
from service.models.registry import SENIOR_TITLES, Alliance, AllianceMember, Organisation
from service.reports.schemas import ComplianceReport, Granularity, Group, RegionLevel
from service.reports.summary import read_window
from service.reports.waitlist import waiting_lists

# The longest range each granularity answers: bounded rows, bounded work.
MAX_DAYS: dict[str, int] = {"day": 92, "week": 26 * 7, "month": 366}
REPORT_WORK_MEM = "64MB"
_FIGURES = (
    "offered",
    "reserved",
    "senior_reserved",
    "returned",
    "bookings",
    "cancelled",
    "attended",
    "no_show",
    "ratio_short",
    "senior_short",
    "lead_short",
)

_PERIOD_SQL = {
    "day": "{col}",
    "week": "date_trunc('week', {col}::timestamp)::date",  # ISO weeks start on Monday
    "month": "date_trunc('month', {col}::timestamp)::date",
}

_REGION_SQL = {
    "province": "left(o.region_code, 2) || '0000'",
    "city": "left(o.region_code, 4) || '00'",
    "county": "o.region_code",
}


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _group_sql(group: Group, region_level: RegionLevel) -> tuple[str, str, str]:
    """The FROM additions, the key columns and the GROUP BY list that roll cells up to ``group``."""
    if group == "hospital":
        return (
            "JOIN organisations o ON o.id = c.hospital_id",
            "o.id AS hospital_id, o.name AS hospital_name",
            "o.id, o.name",
        )
    if group == "department":
        return (
            "JOIN organisations o ON o.id = c.hospital_id JOIN departments d ON d.id = c.department_id",
            "o.id AS hospital_id, o.name AS hospital_name,"
            " d.id AS department_id, d.code AS department_code, d.name AS department_name",
            "o.id, o.name, d.id, d.code, d.name",
        )
    if group == "region":
        code = _REGION_SQL[region_level]
        return (
            f"JOIN organisations o ON o.id = c.hospital_id LEFT JOIN regions rg ON rg.code = {code}",
            f"{code} AS region_code, rg.name AS region_name",
            f"{code}, rg.name",
        )
    # A hospital belongs to an alliance it leads or is a member of; in two alliances, it counts in both.
    return (
        "JOIN (SELECT id AS alliance_id, lead_hospital_id AS hospital_id FROM alliances"
        " UNION SELECT alliance_id, organisation_id FROM alliance_members) m"
        " ON m.hospital_id = c.hospital_id"
        " JOIN alliances a ON a.id = m.alliance_id"
        " AND (CAST(:alliance_id AS bigint) IS NULL OR a.id = :alliance_id)",
        "a.id AS alliance_id, a.name AS alliance_name",
        "a.id, a.name",
    )


def report_sql(granularity: Granularity, group: Group, region_level: RegionLevel) -> str:
    """The live statement: every figure counted from the per-session counts of the whole range.

    Only fixed fragments are formatted in, every value is bound.
    """
    period = _PERIOD_SQL[granularity]
    joins, keys, group_by = _group_sql(group, region_level)
    # Cells are as fine as the group needs: departments only when reporting per department.
    cell = _cell(group)
    ss_cell = ", ".join(f"ss.{column.strip()}" for column in cell.split(","))
    return f"""
WITH ss AS MATERIALIZED (
    SELECT cs.id, cs.hospital_id, cs.department_id, cs.policy_id, cs.status,
           cs.doctor_title IN ({_sql_list(SENIOR_TITLES)}) AS senior,
           {period.format(col="cs.service_date")} AS period_start
    FROM clinic_sessions cs
    WHERE cs.hospital_id = ANY(:hospital_ids)
      AND cs.status <> 'removed'  -- pushed in error: as if never pushed, with its referrals
      AND cs.resource_kind = :resource_kind
      AND cs.service_date BETWEEN :date_from AND :date_to
),
session_cells AS (  -- each cell's distinct versions, hashed by version rather than sorted
    SELECT {cell}, period_start, string_agg(policy_id::text, ',') FILTER (WHERE active) AS policy_ids
    FROM (
        SELECT {cell}, period_start, policy_id, bool_or(status = 'active') AS active
        FROM ss
        GROUP BY {cell}, period_start, policy_id
    ) versions
    GROUP BY {cell}, period_start
),
slot_cells AS (
    SELECT {ss_cell}, ss.period_start,
           sum(ac.public + ac.reserved + ac.booked + ac.returned) AS offered,
           sum(ac.reserved + ac.booked + ac.returned) AS reserved,
           sum(ac.reserved + ac.booked + ac.returned) FILTER (WHERE ss.senior) AS senior_reserved,
           sum(ac.returned) AS returned
    FROM availability_counts ac JOIN ss ON ss.id = ac.session_id
    WHERE ac.hospital_id = ANY(:hospital_ids)
      AND ac.resource_kind = :resource_kind
      AND ac.service_date BETWEEN :date_from AND :date_to
    GROUP BY {ss_cell}, ss.period_start
),
referral_cells AS (
    SELECT {ss_cell}, ss.period_start,
           sum(rc.bookings) AS bookings,
           sum(rc.cancelled) AS cancelled,
           sum(rc.attended) AS attended,
           sum(rc.no_show) AS no_show
    FROM referral_counts rc JOIN ss ON ss.id = rc.session_id
    WHERE rc.hospital_id = ANY(:hospital_ids)
      AND rc.service_date BETWEEN :date_from AND :date_to
    GROUP BY {ss_cell}, ss.period_start
),
shortfall_cells AS (
    SELECT {cell}, {period.format(col="service_date")} AS period_start,
           count(*) FILTER (WHERE kind = 'ratio') AS ratio_short,
           count(*) FILTER (WHERE kind = 'senior_share') AS senior_short,
           count(*) FILTER (WHERE kind = 'lead_time') AS lead_short
    FROM reservation_shortfalls
    WHERE hospital_id = ANY(:hospital_ids)
      AND resource_kind = :resource_kind
      AND service_date BETWEEN :date_from AND :date_to
    GROUP BY {cell}, period_start
),
c AS (
    SELECT session_cells.*,
           coalesce(sl.offered, 0) AS offered, coalesce(sl.reserved, 0) AS reserved,
           coalesce(sl.senior_reserved, 0) AS senior_reserved, coalesce(sl.returned, 0) AS returned,
           coalesce(rf.bookings, 0) AS bookings, coalesce(rf.cancelled, 0) AS cancelled,
           coalesce(rf.attended, 0) AS attended, coalesce(rf.no_show, 0) AS no_show,
           coalesce(sf.ratio_short, 0) AS ratio_short, coalesce(sf.senior_short, 0) AS senior_short,
           coalesce(sf.lead_short, 0) AS lead_short
    FROM session_cells
    LEFT JOIN slot_cells sl USING ({cell}, period_start)
    LEFT JOIN referral_cells rf USING ({cell}, period_start)
    LEFT JOIN shortfall_cells sf USING ({cell}, period_start)
)
{_rollup(keys, joins, group_by)}
"""


def summary_report_sql(
    granularity: Granularity, group: Group, region_level: RegionLevel, open_ranges: int
) -> str:
    """The statement for a range that has closed days: those from the summary, the others live.

    The closed days are ``:closed_from`` to ``:closed_to``; the ``open_ranges`` others are
    ``:open0_from``/``:open0_to`` (and ``:open1_…``). Each part yields partial cells, every
    figure summed: a cell (group member and period) may take days from both. The live part
    counts as ``report_sql`` does, restricted to the open days.
    """
    period = _PERIOD_SQL[granularity]
    joins, keys, group_by = _group_sql(group, region_level)
    cell = _cell(group)
    summary = "report_department_days" if group == "department" else "report_hospital_days"
    zeros = ", ".join(f"0 AS {name}" for name in _FIGURES)
    parts = [
        f"""
    SELECT {cell}, {period.format(col="service_date")} AS period_start, sessions,
           array_to_string(policy_ids, ',') AS policy_ids, {", ".join(_FIGURES)}
    FROM {summary}
    WHERE hospital_id = ANY(:hospital_ids)
      AND resource_kind = :resource_kind
      AND service_date BETWEEN :closed_from AND :closed_to"""
    ]
    live = ""
    if open_ranges:
        ss_cell = ", ".join(f"ss.{column.strip()}" for column in cell.split(","))

        def open_days(col: str) -> str:
            return (
                "("
                + " OR ".join(f"{col} BETWEEN :open{i}_from AND :open{i}_to" for i in range(open_ranges))
                + ")"
            )

        def only(**figures: str) -> str:
            """The figures of one live part, in the summary's column order; the others are 0."""
            return ", ".join(figures.get(name, "0") for name in _FIGURES)

        live = f"""
ss AS MATERIALIZED (
    SELECT cs.id, cs.hospital_id, cs.department_id, cs.policy_id, cs.status,
           cs.doctor_title IN ({_sql_list(SENIOR_TITLES)}) AS senior,
           {period.format(col="cs.service_date")} AS period_start
    FROM clinic_sessions cs
    WHERE cs.hospital_id = ANY(:hospital_ids)
      AND cs.status <> 'removed'
      AND cs.resource_kind = :resource_kind
      AND {open_days("cs.service_date")}
),"""
        parts += [
            f"""
    SELECT {cell}, period_start, sessions, policy_ids, {zeros}
    FROM (
        SELECT {cell}, period_start, sum(n)::bigint AS sessions,
               string_agg(policy_id::text, ',') FILTER (WHERE active) AS policy_ids
        FROM (
            SELECT {cell}, period_start, policy_id, count(*) AS n, bool_or(status = 'active') AS active
            FROM ss
            GROUP BY {cell}, period_start, policy_id
        ) versions
        GROUP BY {cell}, period_start
    ) session_cells""",
            f"""
    SELECT {ss_cell}, ss.period_start, 0, NULL,
           {
                only(
                    offered="sum(ac.public + ac.reserved + ac.booked + ac.returned)",
                    reserved="sum(ac.reserved + ac.booked + ac.returned)",
                    senior_reserved="coalesce(sum(ac.reserved + ac.booked + ac.returned) FILTER (WHERE ss.senior), 0)",
                    returned="sum(ac.returned)",
                )
            }
    FROM availability_counts ac JOIN ss ON ss.id = ac.session_id
    WHERE ac.hospital_id = ANY(:hospital_ids)
      AND ac.resource_kind = :resource_kind
      AND {open_days("ac.service_date")}
    GROUP BY {ss_cell}, ss.period_start""",
            f"""
    SELECT {ss_cell}, ss.period_start, 0, NULL,
           {
                only(
                    bookings="sum(rc.bookings)",
                    cancelled="sum(rc.cancelled)",
                    attended="sum(rc.attended)",
                    no_show="sum(rc.no_show)",
                )
            }
    FROM referral_counts rc JOIN ss ON ss.id = rc.session_id
    WHERE rc.hospital_id = ANY(:hospital_ids)
      AND {open_days("rc.service_date")}
    GROUP BY {ss_cell}, ss.period_start""",
            f"""
    SELECT {cell}, {period.format(col="service_date")}, 0, NULL,
           {
                only(
                    ratio_short="count(*) FILTER (WHERE kind = 'ratio')",
                    senior_short="count(*) FILTER (WHERE kind = 'senior_share')",
                    lead_short="count(*) FILTER (WHERE kind = 'lead_time')",
                )
            }
    FROM reservation_shortfalls
    WHERE hospital_id = ANY(:hospital_ids)
      AND resource_kind = :resource_kind
      AND {open_days("service_date")}
    GROUP BY {cell}, {period.format(col="service_date")}""",
        ]
    union = "\n    UNION ALL".join(parts)
    live_union = "\n    UNION ALL".join(parts[1:])
    if group in ("hospital", "department") and granularity == "day" and open_ranges:
        # A day is closed or open, never both: each closed row is a report row as it stands.
        return f"""
WITH {live}
c AS ({live_union}
)
{_rollup(keys, joins, group_by, having="HAVING sum(c.sessions) > 0", order=False)}
UNION ALL
{_summary_rows(group, summary)}
ORDER BY {_ORDER[group]}, period_start
"""
    if group in ("hospital", "department") and granularity == "day":
        return f"""
{_summary_rows(group, summary)}
ORDER BY {_ORDER[group]}, period_start
"""
    if group in ("hospital", "department"):
        # The cells are the group's members: one aggregation, and a row only where a session is.
        return f"""
WITH {live}
c AS ({union}
)
{_rollup(keys, joins, group_by, having="HAVING sum(c.sessions) > 0")}
"""
    return f"""
WITH {live}
parts AS ({union}
),
c AS (  -- a cell exists where a session not removed does, as in the live statement
    SELECT {cell}, period_start, string_agg(policy_ids, ',') AS policy_ids,
           {", ".join(f"sum({name}) AS {name}" for name in _FIGURES)}
    FROM parts
    GROUP BY {cell}, period_start
    HAVING sum(sessions) > 0
)
{_rollup(keys, joins, group_by)}
"""


def _cell(group: Group) -> str:
    return "hospital_id, department_id" if group == "department" else "hospital_id"


# The output columns a group's rows are ordered by, as _group_sql's GROUP BY orders them.
_ORDER: dict[Group, str] = {
    "hospital": "hospital_id, hospital_name",
    "department": "hospital_id, hospital_name, department_id, department_code, department_name",
}


def _summary_rows(group: Group, summary: str) -> str:
    """The closed days' rows of a per-day hospital or department report, read as they are kept."""
    joins, keys, _ = _group_sql(group, "city")
    figures = ", ".join(f"c.{name}::bigint AS {name}" for name in _FIGURES)
    return f"""SELECT {keys}, c.service_date AS period_start, {figures},
       array_to_string(c.policy_ids, ',') AS policy_ids
FROM {summary} c {joins}
WHERE c.hospital_id = ANY(:hospital_ids)
  AND c.resource_kind = :resource_kind
  AND c.service_date BETWEEN :closed_from AND :closed_to
  AND c.sessions > 0"""


def _rollup(keys: str, joins: str, group_by: str, having: str = "", order: bool = True) -> str:
    """The cells ``c`` rolled up to the group."""
    return f"""SELECT {keys}, c.period_start,
       sum(c.offered)::bigint AS offered,
       sum(c.reserved)::bigint AS reserved,
       sum(c.senior_reserved)::bigint AS senior_reserved,
       sum(c.returned)::bigint AS returned,
       sum(c.bookings)::bigint AS bookings,
       sum(c.cancelled)::bigint AS cancelled,
       sum(c.attended)::bigint AS attended,
       sum(c.no_show)::bigint AS no_show,
       sum(c.ratio_short)::bigint AS ratio_short,
       sum(c.senior_short)::bigint AS senior_short,
       sum(c.lead_short)::bigint AS lead_short,
       string_agg(c.policy_ids, ',') AS policy_ids
FROM c {joins}
GROUP BY {group_by}, c.period_start {having}
{f"ORDER BY {group_by}, c.period_start" if order else ""}"""


def check_range(date_from: date, date_to: date, granularity: Granularity) -> None:
    """Refuse a reversed range, or one longer than the granularity answers."""
    if date_to < date_from:
        raise Unprocessable("report_range_reversed", "'from' must not be after 'to'.")
    days = (date_to - date_from).days + 1
    if days > MAX_DAYS[granularity]:
        raise Unprocessable(
            "report_range_too_long",
            f"A {granularity} report covers at most {MAX_DAYS[granularity]} days; this asks for {days}.",
            max_days=MAX_DAYS[granularity],
        )


async def hospitals_in_scope(
    *,
    session: AsyncSession,
    commission_region: str,
    hospital_id: int | None,
    region: str | None,
    alliance_id: int | None,
) -> list[int]:
    """The hospitals the commission sees that the filters select; 403 for a filter outside its region."""
    stmt = select(Organisation.id).where(
        Organisation.kind == "hospital",
        within(Organisation.region_code, commission_region),
    )
    if region is not None:
        if not covers(commission_region, region):
            raise Forbidden("region_outside", f"Region {region} is outside this commission's region.")
        stmt = stmt.where(within(Organisation.region_code, region))
    if hospital_id is not None:
        hospital = await session.get(Organisation, hospital_id)
        if hospital is None or hospital.kind != "hospital":
            raise NotFound("hospital_not_found", f"No hospital {hospital_id}.")
        if not covers(commission_region, hospital.region_code):
            raise Forbidden("hospital_outside_region", "This hospital is outside the commission's region.")
        stmt = stmt.where(Organisation.id == hospital_id)
    if alliance_id is not None:
        alliance = await session.get(Alliance, alliance_id)
        if alliance is None:
            raise NotFound("alliance_not_found", f"No alliance {alliance_id}.")
        members = select(AllianceMember.organisation_id).where(AllianceMember.alliance_id == alliance_id)
        stmt = stmt.where(or_(Organisation.id == alliance.lead_hospital_id, Organisation.id.in_(members)))
        ids = list(await session.scalars(stmt.order_by(Organisation.id)))
        if not ids:
            raise Forbidden(
                "alliance_outside_region", "No hospital of this alliance is in the commission's region."
            )
        return ids
    return list(await session.scalars(stmt.order_by(Organisation.id)))


def period_label(start: date, granularity: Granularity) -> str:
    if granularity == "day":
        return start.isoformat()
    if granularity == "week":
        year, week, _ = start.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{start:%Y-%m}"


def period_last_day(start: date, granularity: Granularity) -> date:
    if granularity == "day":
        return start
    if granularity == "week":
        return start + timedelta(days=6)
    following = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return following - timedelta(days=1)


@dataclass(frozen=True)
class Report:
    """A compliance report as the API answers it: the JSON of a ``ComplianceReport``.

    The rows are formatted into JSON once, as they are read, rather than built as models
    and encoded: a province's daily report has thousands of rows, and the models cost
    more than the counting. ``model()`` reads the JSON back as the schema describes it
    (the tests hold every answer to it).
    """

    group: Group
    body: bytes

    def rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.body)["rows"]
        return rows

    def model(self) -> ComplianceReport:
        return ComplianceReport.model_validate_json(self.body)


_INSTANT = TypeAdapter(datetime)

# A row's period and figures, in ReportRow's field order; the group's references come before.
_FIGURES_JSON = (
    '%s"offered":%d,"reserved":%d,"reserved_ratio":%s,'
    '"senior_reserved":%d,"senior_share":%s,"pool_bookings":%d,"returned":%d,"cancelled":%d,'
    '"attended":%d,"no_show":%d,"utilisation":%s,"up_referral_share":%s,"shortfall":%s,'
    '"shortfalls":{"ratio":%d,"senior_share":%d,"lead_time":%d},"policies":%s}'
)
_REFERENCES_JSON: dict[Group, str] = {
    "hospital": '{"hospital":%s,"department":null,"region":null,"alliance":null,',
    "department": '{"hospital":%s,"department":%s,"region":null,"alliance":null,',
    "region": '{"hospital":null,"department":null,"region":%s,"alliance":null,',
    "alliance": '{"hospital":null,"department":null,"region":null,"alliance":%s,',
}


def ratio_json(part: int, whole: int, texts: dict[int, str]) -> str:
    """``round(part / whole, 4)`` as JSON (null when ``whole`` is 0), as ``json.dumps`` writes it.

    Decided in integers: for counts below 2**38 the float quotient lies on the same side of
    every rounding tie as the exact one (they differ by less than the nearest tie is away),
    so only an exact tie asks the float, as round() does. ``texts`` keeps each result's text
    by its ten-thousandths: a report has few distinct ratios.
    """
    if not whole:
        return "null"
    if whole < 0 or not 0 <= part < 1 << 38:
        return repr(round(part / whole, 4))
    tenthousandths, rest = divmod(part * 10000, whole)
    if 2 * rest > whole or (2 * rest == whole and round(part / whole, 4) != tenthousandths / 10000):
        tenthousandths += 1
    text = texts.get(tenthousandths)
    if text is None:
        text = texts[tenthousandths] = repr(tenthousandths / 10000)
    return text


def _text(value: str | None) -> str:
    return json.dumps(value, ensure_ascii=False)


async def compliance_report(
    *,
    session: AsyncSession,
    hospital_ids: list[int],
    date_from: date,
    date_to: date,
    granularity: Granularity,
    group: Group,
    region_level: RegionLevel,
    resource_kind: ResourceKind,
    alliance_id: int | None,
    now: datetime,
    use_summary: bool = True,
) -> Report:
    """The report rows for ``hospital_ids`` over ``[date_from, date_to]``.

    The closed days of the range come from the summary, the others are counted live; without
    ``use_summary`` (or with no closed day in the range) every day is counted live. Both give
    the same figures.
    """
    rows: list[Any] = []
    if hospital_ids:
        binds: list[BindParameter[Any]] = [bindparam("hospital_ids", type_=ARRAY(BigInteger))]
        if group == "alliance":
            binds.append(bindparam("alliance_id", type_=BigInteger()))
        params: dict[str, Any] = {"hospital_ids": hospital_ids, "resource_kind": resource_kind}
        if group == "alliance":
            params["alliance_id"] = alliance_id
        window = await read_window(session=session) if use_summary else None
        closed = window.closed(date_from, date_to) if window else None
        if window is None or closed is None:
            sql = report_sql(granularity, group, region_level)
            params.update(date_from=date_from, date_to=date_to)
        else:
            open_ranges = window.open(date_from, date_to)
            sql = summary_report_sql(granularity, group, region_level, len(open_ranges))
            params.update(closed_from=closed[0], closed_to=closed[1])
            for i, (first, last) in enumerate(open_ranges):
                params.update({f"open{i}_from": first, f"open{i}_to": last})
        # A report aggregates up to a few million rows; let its hashes and sorts stay in memory.
        await session.execute(text(f"SET LOCAL work_mem = '{REPORT_WORK_MEM}'"))
        rows = list((await session.execute(text(sql).bindparams(*binds), params)).all())
    lists = {row.policy_ids or "" for row in rows}  # a few distinct lists of policy ids
    ids_of = {text: {int(p) for p in text.split(",")} if text else set() for text in lists}
    policies = {
        p.id: p
        for p in await session.scalars(select(Policy).where(Policy.id.in_(set().union(*ids_of.values()))))
    }
    listed = {  # each list as the JSON of its versions, ordered by code and version
        text: json.dumps(
            [
                {"id": p.id, "code": p.code, "version": p.version}
                for p in sorted((policies[i] for i in ids), key=lambda p: (p.code, p.version))
            ],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        for text, ids in ids_of.items()
    }
    head = json.dumps(
        {
            "date_from": date_from.isoformat(),
            "date_to": date_to.isoformat(),
            "granularity": granularity,
            "group": group,
            "region_level": region_level if group == "region" else None,
            "resource_kind": resource_kind,
            "generated_at": _INSTANT.dump_python(now, mode="json"),
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    out = _rows_json(rows, group, granularity, date_from, date_to, listed)
    waiting = await waiting_lists(
        session=session,
        hospital_ids=hospital_ids,
        resource_kind=resource_kind,
        date_from=date_from,
        date_to=date_to,
        now=now,
    )
    body = (
        head[:-1]
        + ',"rows":['
        + ",".join(out)
        + '],"waiting_lists":'
        + json.dumps(waiting, ensure_ascii=False, separators=(",", ":"))
        + "}"
    )
    return Report(group=group, body=body.encode())


def _rows_json(
    rows: list[Any],
    group: Group,
    granularity: Granularity,
    date_from: date,
    date_to: date,
    listed: dict[str, str],
) -> list[str]:
    """Each row of the statement as the JSON of a ``ReportRow``.

    What repeats (a group member's references, a period, a list of policy versions, a ratio)
    is formatted once; ``listed`` maps each list of policy ids to its JSON.
    """
    references = _REFERENCES_JSON[group]
    keys = 5 if group == "department" else 2  # the group's columns before period_start
    named: dict[Any, str] = {}  # a group member's reference(s), formatted once
    periods: dict[date, str] = {}  # a period's three fields, as JSON
    texts: dict[int, str] = {}  # ratios in ten-thousandths, each formatted once
    ratio = ratio_json
    out: list[str] = []
    for row in rows:
        key = row[:keys]
        reference = named.get(key)
        if reference is None:
            if group == "department":
                hospital_id, hospital_name, department_id, code, name = key
                refs: tuple[str, ...] = (
                    f'{{"id":{hospital_id},"name":{_text(hospital_name)}}}',
                    f'{{"id":{department_id},"code":{_text(code)},"name":{_text(name)}}}',
                )
            elif group == "region":
                refs = (f'{{"code":{_text(key[0])},"name":{_text(key[1])}}}',)
            else:
                refs = (f'{{"id":{key[0]},"name":{_text(key[1])}}}',)
            reference = named[key] = references % refs
        (start, offered, reserved, senior_reserved, returned, bookings, cancelled, attended, no_show,
         ratio_short, senior_short, lead_short, policy_list) = row[keys:]  # fmt: skip
        period = periods.get(start)
        if period is None:
            first = max(start, date_from).isoformat()
            last = min(period_last_day(start, granularity), date_to).isoformat()
            label = _text(period_label(start, granularity))
            period = periods[start] = f'"period":{label},"period_start":"{first}","period_end":"{last}",'

        kept = bookings - cancelled  # pool bookings that still stand (active, attended or no-show)
        out.append(
            reference
            + _FIGURES_JSON
            % (
                period,
                offered,
                reserved,
                ratio(reserved, offered, texts),
                senior_reserved,
                ratio(senior_reserved, reserved, texts),
                bookings,
                returned,
                cancelled,
                attended,
                no_show,
                ratio(kept, reserved, texts),
                ratio(kept, offered, texts),
                "true" if ratio_short or senior_short or lead_short else "false",
                ratio_short,
                senior_short,
                lead_short,
                listed[policy_list or ""],
            )
        )
    return out
