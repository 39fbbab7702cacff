"""Compliance report timings on a province-sized dataset, through the HTTP API.

Run from the repository root:

    .venv/bin/python bench/reports.py [--hospitals 100] [--departments 30] [--days 60]
                                      [--slots-per-day 16] [--open-days 1] [--repeat 20] [--quick]

What it does, all on loopback and all cleaned up afterwards:

1. PostgreSQL as in bench/booking_rush.py: a fresh database on DATABASE_URL's
   server, or the embedded server in a temporary directory; migrations to head;
   ``bench/world.py``'s ``build_world`` for the province 340000, the test-city policy
   (20 %, half senior) and a commission key for the whole province.
2. Seeding in SQL through the real schema (generate_series, one statement per
   table): 16 more cities and counties; H hospitals spread over 19 counties, each
   under test-city; D departments per hospital, one doctor each (every other one
   senior); one session per department and day over N days from 1 January 2026;
   S 15-minute slots per session, every fifth slot held for the pool (20 %).
   Of the held slots about 60 % are booked, with a referral (80 % attended, 10 %
   no-show, 10 % unreported) and 40 % returned to the public, a third of those
   after a cancelled referral. One department-day in 7 of department D1 carries
   a ratio shortfall. Ten alliances of five hospitals. Sessions, slots and referrals
   are inserted with triggers off (no per-row foreign-key checks: the seed's keys are
   right by construction), slots and referrals in two halves at once; the per-session
   counts those triggers keep are then filled by the same statements their revisions
   (0009, 0010) use for existing rows. Then VACUUM ANALYZE.
3. The clock stands at 09:00 on the last day but ``--open-days - 1`` (so the last
   ``--open-days`` days are today and after: open). Where the build has a report
   summary, its job closes every day before today, timed, and the summary is analysed.
4. The server: bench/rush_server.py in a subprocess, at that clock.
5. Each report query is sent ``--repeat`` times, one after another, by the
   commission's client, and after each report one ``GET /v1/me`` (the floor: a request
   that authenticates and reads one row) by the same client; latency is client-side,
   request sent to body read. Printed per query: rows, response size, p50 and p99 (with
   20 repeats p99 is the max).

The last line: ``reports: p50_ms=… p99_ms=… floor_p99_ms=… slots=…``, where p50 and p99
are over every timing of the whole-province queries (all hospitals of the province: the
per-hospital day, week and month reports of the whole range, the city, county and
alliance rollups and the CSV), and the floor is ``GET /v1/me``'s p99 in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import math
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402

from bench.booking_rush import START, ServerProcess, plain, provision  # noqa: E402
from bench.world import World, build_world  # noqa: E402
from service.kit.clock import ManualClock, local_datetime  # noqa: E402
from service.kit.config import Settings  # noqa: E402
from service.kit.crypto import Crypto  # noqa: E402
from service.kit.db import Database  # noqa: E402
from service.models.migrations import upgrade  # noqa: E402

FIRST_DAY = date(2026, 1, 1)
CITIES = range(3, 11)  # 340300 ... 341000, two counties each, beside 340100 and 340200

SEED: list[tuple[str, str]] = [
    (
        "regions",
        """
        INSERT INTO regions (code, name, level, parent_code)
        SELECT (340000 + c * 100)::text, '城市' || c, 'city', '340000' FROM generate_series(3, 10) c;
        INSERT INTO regions (code, name, level, parent_code)
        SELECT (340000 + c * 100 + k)::text, '区县' || c || '-' || k, 'county', (340000 + c * 100)::text
        FROM generate_series(3, 10) c, generate_series(2, 3) k;
        """,
    ),
    (
        "hospitals",
        """
        INSERT INTO organisations (code, name, kind, region_code, hospital_level, hospital_tier)
        SELECT 'BH-' || i, '测试医院' || i, 'hospital',
               (SELECT array_agg(code ORDER BY code) FROM regions WHERE level = 'county')[1 + i % 19],
               3, 'city'
        FROM generate_series(1, :hospitals) i;
        INSERT INTO hospital_policies (hospital_id, resource_kind, policy_code, assigned_at)
        SELECT id, 'outpatient', 'test-city', now() FROM organisations WHERE code LIKE 'BH-%';
        INSERT INTO alliances (name, lead_hospital_id)
        SELECT '医联体' || a, (SELECT id FROM organisations WHERE code = 'BH-' || (a * 5 + 1))
        FROM generate_series(0, least(9, :hospitals / 5 - 1)) a;
        INSERT INTO alliance_members (alliance_id, organisation_id)
        SELECT al.id, o.id
        FROM generate_series(0, least(9, :hospitals / 5 - 1)) a
        CROSS JOIN generate_series(2, 5) k
        JOIN alliances al ON al.name = '医联体' || a
        JOIN organisations o ON o.code = 'BH-' || (a * 5 + k);
        """,
    ),
    (
        "departments and doctors",
        """
        INSERT INTO departments (hospital_id, code, name)
        SELECT o.id, 'D' || d, '科室' || d FROM organisations o, generate_series(1, :departments) d
        WHERE o.code LIKE 'BH-%';
        INSERT INTO doctors (organisation_id, code, name, title)
        SELECT hospital_id, 'DR-' || id, '医生' || id,
               CASE WHEN id % 2 = 0 THEN 'associate_chief' ELSE 'attending' END
        FROM departments WHERE code ~ '^D[0-9]+$';
        INSERT INTO doctors (organisation_id, code, name, title)
        SELECT id, 'FD-BENCH', '李家庭', 'attending' FROM organisations WHERE code = 'P-A';
        INSERT INTO residents (id_index, id_number_enc, name_enc, created_at, updated_at)
        SELECT sha256(('bench-resident-' || i)::bytea), '\\x00'::bytea, '\\x00'::bytea, now(), now()
        FROM generate_series(1, 1000) i;
        """,
    ),
    (
        "sessions",
        """
        INSERT INTO clinic_sessions (hospital_id, external_id, version, department_id, resource_kind,
                                     doctor_id, doctor_title, service_date, period, status, policy_id, updated_at)
        SELECT d.hospital_id, 'S-' || d.id || '-' || g, 1, d.id, 'outpatient', dr.id, dr.title,
               :first_day + g, 'morning', 'active',
               (SELECT id FROM policies WHERE code = 'test-city' AND version = 1), now()
        FROM departments d
        JOIN doctors dr ON dr.organisation_id = d.hospital_id AND dr.code = 'DR-' || d.id
        CROSS JOIN generate_series(0, :days - 1) g;
        """,
    ),
    (
        "slots",
        """
        INSERT INTO slots (session_id, resource_kind, hospital_id, number, starts_at, ends_at,
                           pool_opens_at, public_at, status, returned_at)
        SELECT cs.id, 'outpatient', cs.hospital_id, n,
               (cs.service_date + time '08:00') AT TIME ZONE 'Asia/Shanghai' + (n - 1) * interval '15 minutes',
               (cs.service_date + time '08:00') AT TIME ZONE 'Asia/Shanghai' + n * interval '15 minutes',
               (cs.service_date - 8 + time '08:00') AT TIME ZONE 'Asia/Shanghai',
               (cs.service_date - 7 + time '08:00') AT TIME ZONE 'Asia/Shanghai',
               CASE WHEN n % 5 <> 0 THEN 'public' WHEN (cs.id + n) % 10 < 6 THEN 'booked' ELSE 'returned' END,
               CASE WHEN n % 5 = 0 AND (cs.id + n) % 10 >= 6
                    THEN (cs.service_date - 7 + time '08:00') AT TIME ZONE 'Asia/Shanghai' END
        FROM clinic_sessions cs CROSS JOIN generate_series(1, :slots) n
        WHERE cs.external_id LIKE 'S-%' AND :half;
        """,
    ),
    (
        "referrals",
        """
        INSERT INTO referrals (reference, hospital_id, department_id, session_id, slot_id, service_date,
                               resident_id, resident_name_enc, booker_org_id, referring_doctor_id,
                               booked_by_client_id, policy_id,
                               encounter_id, encountered_at, diagnoses, verification_code_enc, status, booked_at,
                               cancelled_at, cancelled_by, attendance, attendance_reported_at)
        SELECT CASE WHEN s.status = 'booked' THEN 'B' ELSE 'C' END || s.id,
               cs.hospital_id, cs.department_id, cs.id, s.id, cs.service_date,
               (SELECT min(id) FROM residents) + (cs.id * 7 + s.number) % 1000, '\\x00'::bytea,
               p.id, fd.id, (SELECT min(id) FROM api_clients WHERE organisation_id = p.id), cs.policy_id,
               'E' || s.id, s.pool_opens_at, ARRAY['I10'], '\\x00'::bytea,
               CASE WHEN s.status = 'booked' THEN 'booked' ELSE 'cancelled' END,
               s.pool_opens_at + interval '1 hour',
               CASE WHEN s.status = 'returned' THEN s.pool_opens_at + interval '2 hours' END,
               CASE WHEN s.status = 'returned' THEN 'family_doctor' END,
               CASE WHEN s.status = 'booked' AND s.id % 10 < 8 THEN 'attended'
                    WHEN s.status = 'booked' AND s.id % 10 = 8 THEN 'no_show' END,
               CASE WHEN s.status = 'booked' AND s.id % 10 < 9 THEN s.ends_at + interval '1 hour' END
        FROM slots s
        JOIN clinic_sessions cs ON cs.id = s.session_id
        CROSS JOIN (SELECT id FROM organisations WHERE code = 'P-A') p
        JOIN doctors fd ON fd.organisation_id = p.id AND fd.code = 'FD-BENCH'
        WHERE (s.status = 'booked' OR (s.status = 'returned' AND s.id % 3 = 0)) AND :half;
        """,
    ),
    (
        "shortfalls",
        """
        INSERT INTO reservation_shortfalls (department_id, service_date, resource_kind, kind, hospital_id,
                                            required, actual, policy_id, recorded_at)
        SELECT cs.department_id, cs.service_date, 'outpatient', 'ratio', cs.hospital_id, 4, 3, cs.policy_id, now()
        FROM clinic_sessions cs JOIN departments d ON d.id = cs.department_id
        WHERE d.code = 'D1' AND (cs.service_date - :first_day) % 7 = 0;
        """,
    ),
]


def bind(sql: str, args: argparse.Namespace) -> str:
    """The seed's few integers and its first day, formatted in (they come from argparse, not users)."""
    values = {
        ":hospitals": str(args.hospitals),
        ":departments": str(args.departments),
        ":days": str(args.days),
        ":slots": str(args.slots_per_day),
        ":first_day": f"date '{FIRST_DAY.isoformat()}'",
    }
    for name, value in values.items():
        sql = sql.replace(name, value)
    return sql


def revision(name: str) -> ModuleType:
    """A revision module of alembic/versions, for the statement it fills a new count table with."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "alembic" / "versions" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def count_fills() -> list[tuple[str, str]]:
    """The per-session counts the seed's triggers would have kept, as their revisions fill them."""
    slots, referrals = revision("0009_availability"), revision("0010_report_counts")
    return [
        ("availability counts", slots._apply(slots._INSERTED.replace("new_slots", "slots"))),
        ("referral counts", referrals._apply(referrals._INSERTED.replace("new_referrals", "referrals"))),
    ]


# The seed's stages, in order; the statements of one stage run at once, each on its own connection
# (the machine has a core per half). "triggers off" statements run with triggers (and so foreign-key
# checks) off: sessions, slots and referrals are right by construction, and the counts their
# triggers keep are filled afterwards as their revisions fill them.
STEP = dict(SEED)


def stages() -> list[list[tuple[str, str, bool]]]:
    """[(name, statement, triggers off)] per stage; ``:half`` splits a table between two statements."""
    fills = dict(count_fills())
    even, odd = "cs.id % 2 = 0", "cs.id % 2 = 1"
    return [
        *([(name, STEP[name], False)] for name in ("regions", "hospitals", "departments and doctors")),
        [("sessions", STEP["sessions"], True)],
        [("slots, even sessions", STEP["slots"].replace(":half", even), True),
         ("slots, odd sessions", STEP["slots"].replace(":half", odd), True)],
        [("referrals, even sessions", STEP["referrals"].replace(":half", even), True),
         ("referrals, odd sessions", STEP["referrals"].replace(":half", odd), True),
         ("availability counts", fills["availability counts"], False)],
        [("referral counts", fills["referral counts"], False), ("shortfalls", STEP["shortfalls"], False)],
    ]  # fmt: skip


async def seed(url: str, args: argparse.Namespace) -> None:
    conns = [await asyncpg.connect(plain(url)) for _ in range(3)]

    async def run_step(conn: asyncpg.Connection, name: str, sql: str, triggers_off: bool) -> None:
        started = time.perf_counter()
        await conn.execute(f"SET session_replication_role = {'replica' if triggers_off else 'origin'}")
        await conn.execute(bind(sql, args))
        print(f"  seeded {name} in {time.perf_counter() - started:.1f} s", flush=True)

    try:
        for stage in stages():
            await asyncio.gather(*(run_step(conn, *step) for conn, step in zip(conns, stage, strict=False)))
        conn = conns[0]
        await conn.execute("SET session_replication_role = origin")
        started = time.perf_counter()
        await conn.execute("VACUUM ANALYZE")
        print(f"  VACUUM ANALYZE in {time.perf_counter() - started:.1f} s", flush=True)
        counts = {
            table: await conn.fetchval(f"SELECT count(*) FROM {table}")  # fixed table names
            for table in ("organisations", "departments", "clinic_sessions", "slots", "referrals")
        }
        size = await conn.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))")
        print("  rows: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"; database {size}")
    finally:
        for conn in conns:
            await conn.close()


def queries(args: argparse.Namespace, one_hospital: int) -> list[tuple[str, dict[str, Any], bool]]:
    """(name, parameters, whether it is a whole-province query)."""
    last = FIRST_DAY + timedelta(days=args.days - 1)
    span = {"from": FIRST_DAY.isoformat(), "to": last.isoformat()}
    month = {"from": "2026-01-01", "to": "2026-01-31", "granularity": "month"}
    return [
        ("per hospital, day, all hospitals, whole range", {**span, "granularity": "day"}, True),
        ("per hospital, week, all hospitals, whole range", {**span, "granularity": "week"}, True),
        ("per hospital, month, all hospitals, whole range", {**span, "granularity": "month"}, True),
        (
            "one hospital, day, whole range",
            {**span, "granularity": "day", "hospital_id": one_hospital},
            False,
        ),
        (
            "per department, month, one hospital",
            {**month, "group": "department", "hospital_id": one_hospital},
            False,
        ),
        (
            "per department, day, one hospital, whole range",
            {**span, "group": "department", "hospital_id": one_hospital},
            False,
        ),
        ("region rollup (city), month", {**month, "group": "region"}, True),
        ("region rollup (county), month", {**month, "group": "region", "region_level": "county"}, True),
        ("alliance rollup, month", {**month, "group": "alliance"}, True),
        ("per hospital, month, CSV", {**month, "format": "csv"}, True),
    ]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def time_queries(base_url: str, world: World, args: argparse.Namespace, one_hospital: int) -> str:
    """Time every query, print a table, and return the summary line."""
    print(f"\n{'query':52} {'rows':>6} {'bytes':>9} {'p50 ms':>8} {'p99 ms':>8}")
    province: list[float] = []
    floor: list[float] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=120, headers=world.auth("commission")) as c:
        for _ in range(3):  # warm the connection and the server's first-request paths
            await c.get("/v1/me")
        for name, params, whole_province in queries(args, one_hospital):
            timings: list[float] = []
            rows = size = 0
            for _ in range(args.repeat):
                started = time.perf_counter()
                r = await c.get("/v1/reports/compliance", params=params)
                body = r.content
                timings.append(time.perf_counter() - started)
                if r.status_code != 200:
                    raise RuntimeError(f"{name}: {r.status_code} {r.text[:300]}")
                size = len(body)
                rows = body.count(b"\r\n") - 1 if params.get("format") == "csv" else len(r.json()["rows"])
                started = time.perf_counter()
                me = await c.get("/v1/me")
                me.read()
                floor.append(time.perf_counter() - started)
                if me.status_code != 200:
                    raise RuntimeError(f"/v1/me: {me.status_code} {me.text[:300]}")
            if whole_province:
                province += timings
            print(
                f"{name:52} {rows:>6} {size:>9} {percentile(timings, 0.5):>8.1f} {percentile(timings, 0.99):>8.1f}",
                flush=True,
            )
    print(f"{'floor: GET /v1/me after each report':52} {'':>6} {'':>9} "
          f"{percentile(floor, 0.5):>8.1f} {percentile(floor, 0.99):>8.1f}")  # fmt: skip
    slots = args.hospitals * args.departments * args.days * args.slots_per_day
    return (
        f"reports: p50_ms={percentile(province, 0.5):.1f} p99_ms={percentile(province, 0.99):.1f} "
        f"floor_p99_ms={percentile(floor, 0.99):.1f} slots={slots}"
    )


async def close_days_before(url: str, now: datetime) -> None:
    """Run the report summary's job, as a worker would at ``now``, where this build has one."""
    try:
        from service.reports.summary import close_days
    except ImportError:
        print("  this build keeps no report summary: every day is counted live")
        return
    started = time.perf_counter()
    db = Database(url, pool_size=2)
    try:
        days = await close_days(db, ManualClock(now))
    finally:
        await db.dispose()
    conn = await asyncpg.connect(plain(url))
    try:
        await conn.execute(
            "VACUUM ANALYZE report_hospital_days, report_department_days, report_summary_window"
        )
    finally:
        await conn.close()
    print(f"  closed {days} days before {now.date()} in {time.perf_counter() - started:.1f} s", flush=True)


async def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    pg = await provision()
    server: ServerProcess | None = None
    try:
        await upgrade(pg.url)
        db = Database(pg.url, pool_size=2)
        try:
            world = await build_world(
                db, Crypto.from_settings(Settings(run_loops=False, log_json=False)), ManualClock(START)
            )
        finally:
            await db.dispose()
        print(
            f"seeding {args.hospitals} hospitals x {args.departments} departments x {args.days} days "
            f"x {args.slots_per_day} slots ...",
            flush=True,
        )
        await seed(pg.url, args)
        # The last --open-days days are today and after: the report counts them live.
        now = local_datetime(FIRST_DAY + timedelta(days=args.days - args.open_days), 9)
        await close_days_before(pg.url, now)
        conn = await asyncpg.connect(plain(pg.url))
        try:
            one_hospital = await conn.fetchval("SELECT id FROM organisations WHERE code = 'BH-1'")
        finally:
            await conn.close()
        server = await ServerProcess.start(pg.url, now, pool_size=5, max_seconds=3600)
        summary = await time_queries(server.base_url, world, args, one_hospital)
        print(f"\ntotal run time {time.perf_counter() - started:.1f} s")
        print(summary, flush=True)
    finally:
        if server is not None:
            await server.stop()
        try:
            await pg.drop()
        finally:
            pg.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hospitals", type=int, default=100)
    parser.add_argument("--departments", type=int, default=30)
    parser.add_argument("--days", type=int, default=60, help="at most 92, the longest day report")
    parser.add_argument("--slots-per-day", type=int, default=16, help="slots per department-day")
    parser.add_argument(
        "--open-days", type=int, default=1, help="the last days, from today on: counted live (1: today)"
    )
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument(
        "--quick", action="store_true", help="40 hospitals x 20 departments x 45 days, 10 repeats"
    )
    args = parser.parse_args()
    if args.quick:
        args.hospitals, args.departments, args.days, args.repeat = 40, 20, 45, 10
    if not 10 <= args.hospitals <= 1000 or not 1 <= args.departments <= 100:
        parser.error("--hospitals must be 10..1000 and --departments 1..100")
    if not 1 <= args.days <= 92 or not 5 <= args.slots_per_day <= 40 or not 1 <= args.repeat <= 1000:
        parser.error("--days must be 1..92, --slots-per-day 5..40, --repeat 1..1000")
    if not 0 <= args.open_days < args.days:
        parser.error("--open-days must be 0.. --days - 1")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
