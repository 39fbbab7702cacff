"""Availability feed under load: a city/7-day query on a province of a million slots, with and
without a booking rush running at the same time.

Run from the repository root:

    .venv/bin/python bench/availability.py [--cities 8] [--hospitals-per-city 16] [--departments 10]
                                           [--exam-departments 1] [--days 28] [--slots-per-session 14]
                                           [--requests 400]
                                           [--rush-clients 3000] [--rush-slots 300] [--concurrency 30]
                                           [--same-server]

What it does, all on loopback and all cleaned up afterwards:

1. PostgreSQL as in ``booking_rush.py``: with DATABASE_URL a fresh database on that
   server (dropped at the end), otherwise the embedded server in a temporary directory.
   The schema is built by the migrations, so the availability triggers are live.
2. The province (Anhui, 340000) with ``--cities`` cities of ``--hospitals-per-city``
   hospitals each (one district per city), ``--departments`` departments and four doctors
   (one per title) per hospital, and for every department, date and period (morning,
   afternoon) one clinic session of ``--slots-per-session`` 15-minute slots, over ``--days``
   days ending 15 March 2026. The last ``--exam-departments`` departments of each hospital
   are imaging departments instead (R18): their sessions are examination blocks without a
   doctor, CT in the morning and MRI in the afternoon. Defaults: 8 x 16 = 128 hospitals,
   71,680 sessions (a tenth of them examinations), 1,003,520 slots. Every fifth slot was held for the pool; depending on its pool window
   (public release 7 days before, pool one day earlier) at the bench's clock (Monday 2 March
   2026 09:00 Beijing time) it is pending, open, partly booked, or returned/booked. All of
   it is written with INSERT ... SELECT generate_series through the real tables, so the
   triggers build the counts exactly as they would for pushes. Then ANALYZE.
3. ``bench/world.py``'s ``build_world`` adds the test region's organisations and keys; the
   booking-rush department-day (city hospital, cardiology, 10 March) is pushed and its
   residents signed over HTTP, as ``booking_rush.py`` does.
4. Servers: ``bench/rush_server.py`` subprocesses (uvicorn, one event loop, clock fixed at
   the bench's now). By default the platform reads go to their own API replica (a second
   server process on the same database), as a deployment would run them; with
   ``--same-server`` the reads share the booking server.
5. The reader, in its own subprocess (so its latency does not include the rush client's
   work): ``GET /v1/availability?region=340100&from=2026-03-09&to=2026-03-15`` one request
   at a time, as the platform of Hefei (340100) with its API key. Latency is client-side,
   from sending the request to having read the whole body. Phases:
   - quiet: ``--requests`` full queries (after 20 warm-up requests), then the same number of
     revalidations with If-None-Match (304) and of ``since`` polls;
   - rush: full queries back to back for as long as a booking rush of ``--rush-clients``
     attempts by ``--concurrency`` family-doctor clients over ``--rush-slots`` pool slots runs
     (``POST /v1/referrals``, the same code as ``booking_rush.py``);
   - with ``--floor``: the rush's referrals are cancelled and its slots held again, and a
     second rush runs while the reader loops ``GET /v1/me`` (authentication and one small
     query): the latency any authenticated GET gets on this machine under the same load.
6. Prints p50/p99/max per phase, the response size and item count, the rush's own
   figures, and checks that the counts the feed reports for the rush department-day
   equal the number of 201s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import threading
import time
from argparse import Namespace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import asyncpg  # noqa: E402
import booking_rush as rush  # noqa: E402
import httpx  # noqa: E402

from bench.world import build_world  # noqa: E402
from service.kit.clock import ManualClock  # noqa: E402
from service.kit.config import Settings  # noqa: E402
from service.kit.crypto import Crypto  # noqa: E402
from service.kit.db import Database  # noqa: E402
from service.models.migrations import upgrade  # noqa: E402

START = rush.START  # Monday 2 March 2026, 09:00 Beijing time
LAST_DAY = date(2026, 3, 15)
QUERY = {"region": "340100", "from": "2026-03-09", "to": "2026-03-15"}

# --- the province ---------------------------------------------------------------------------

SEED_SQL = [
    # One district per city; the test world's regions (340000, 340100, 340200 and districts) exist.
    """
    INSERT INTO regions (code, name, level, parent_code)
    SELECT format('34%s00', lpad(c::text, 2, '0')), format('城市%s', c), 'city', '340000'
    FROM generate_series(1, $1::int) c
    ON CONFLICT (code) DO NOTHING
    """,
    """
    INSERT INTO regions (code, name, level, parent_code)
    SELECT format('34%s11', lpad(c::text, 2, '0')), format('城市%s第一区', c), 'county',
           format('34%s00', lpad(c::text, 2, '0'))
    FROM generate_series(1, $1::int) c
    ON CONFLICT (code) DO NOTHING
    """,
    """
    INSERT INTO organisations (code, name, kind, region_code, hospital_level, hospital_tier)
    SELECT format('BH-%s-%s', c, h), format('城市%s第%s医院', c, h), 'hospital',
           format('34%s11', lpad(c::text, 2, '0')), 3, 'city'
    FROM generate_series(1, $1::int) c, generate_series(1, $2::int) h
    """,
    """
    INSERT INTO departments (hospital_id, code, name)
    SELECT o.id, format('DEP%s', lpad(d::text, 2, '0')), format('科室%s', d)
    FROM organisations o, generate_series(1, $1::int) d WHERE o.code LIKE 'BH-%'
    """,
    """
    INSERT INTO doctors (organisation_id, code, name, title)
    SELECT o.id, format('BD-%s', t.n), format('医生%s', t.n), t.title
    FROM organisations o,
         unnest(ARRAY['chief', 'associate_chief', 'attending', 'resident']) WITH ORDINALITY t(title, n)
    WHERE o.code LIKE 'BH-%'
    """,
    # Sessions: every department, date and period; the doctor (and so the title) rotates. Departments
    # numbered above $3 are imaging: CT blocks in the morning, MRI in the afternoon, no doctor.
    """
    INSERT INTO clinic_sessions (hospital_id, external_id, version, department_id, resource_kind, modality,
                                 doctor_id, doctor_title, service_date, period, status, updated_at)
    SELECT dep.hospital_id, format('BS-%s-%s-%s', dep.code, day, p.period), 1, dep.id,
           CASE WHEN k.exam THEN 'examination' ELSE 'outpatient' END,
           CASE WHEN k.exam THEN CASE p.period WHEN 'morning' THEN 'CT' ELSE 'MRI' END END,
           CASE WHEN NOT k.exam THEN doc.id END, CASE WHEN NOT k.exam THEN doc.title END,
           day, p.period, 'active', now()
    FROM departments dep
    JOIN organisations o ON o.id = dep.hospital_id AND o.code LIKE 'BH-%'
    CROSS JOIN LATERAL (SELECT substr(dep.code, 4)::int > $3::int AS exam) k
    CROSS JOIN generate_series($1::date, $2::date, interval '1 day') AS g(day_ts)
    CROSS JOIN LATERAL (SELECT g.day_ts::date AS day) d
    CROSS JOIN (VALUES ('morning', 0), ('afternoon', 1)) AS p(period, k)
    JOIN doctors doc ON doc.organisation_id = dep.hospital_id
     AND doc.code = format('BD-%s', 1 + (dep.id + (day - $1::date) * 2 + p.k) % 4)
    """,
    # Slots: 15 minutes each from 08:00 or 14:00; public release 7 days before at 08:00, pool a day
    # earlier. Every fifth slot was held for the pool; its state follows the window at $2 (now).
    """
    INSERT INTO slots (session_id, resource_kind, hospital_id, number, starts_at, ends_at, pool_opens_at,
                       public_at, status)
    SELECT cs.id, cs.resource_kind, cs.hospital_id, n, t.starts_at, t.starts_at + interval '15 minutes',
           t.public_at - interval '1 day', t.public_at,
           CASE
               WHEN n % 5 <> 0 THEN 'public'
               WHEN t.public_at <= $2 THEN CASE WHEN n % 10 = 0 THEN 'booked' ELSE 'returned' END
               WHEN t.public_at - interval '1 day' <= $2 AND n % 10 = 0 THEN 'booked'
               ELSE 'reserved'
           END
    FROM clinic_sessions cs
    JOIN organisations o ON o.id = cs.hospital_id AND o.code LIKE 'BH-%'
    CROSS JOIN generate_series(1, $1::int) n
    CROSS JOIN LATERAL (
        SELECT (cs.service_date + CASE cs.period WHEN 'morning' THEN time '08:00' ELSE time '14:00' END
                + (n - 1) * interval '15 minutes') AT TIME ZONE 'Asia/Shanghai' AS starts_at,
               ((cs.service_date - 7) + time '08:00') AT TIME ZONE 'Asia/Shanghai' AS public_at
    ) t
    """,
]


async def seed_province(url: str, args: Namespace) -> dict[str, Any]:
    first_day = LAST_DAY - timedelta(days=args.days - 1)
    conn = await asyncpg.connect(rush.plain(url))
    timings: dict[Any, float] = {}
    try:
        steps = [
            (SEED_SQL[0], [args.cities]),
            (SEED_SQL[1], [args.cities]),
            (SEED_SQL[2], [args.cities, args.hospitals_per_city]),
            (SEED_SQL[3], [args.departments]),
            (SEED_SQL[4], []),
            (SEED_SQL[5], [first_day, LAST_DAY, args.departments - args.exam_departments]),
            (SEED_SQL[6], [args.slots_per_session, START]),
        ]
        for i, (sql, params) in enumerate(steps):
            started = time.perf_counter()
            await conn.execute(sql, *params)
            timings[i] = time.perf_counter() - started
        started = time.perf_counter()
        await conn.execute("ANALYZE")
        timings["analyze"] = time.perf_counter() - started
        figures = dict(
            await conn.fetchrow(
                """
                SELECT (SELECT count(*) FROM slots) AS slots,
                       (SELECT count(*) FROM clinic_sessions) AS sessions,
                       (SELECT count(*) FROM clinic_sessions WHERE resource_kind = 'examination')
                           AS exam_sessions,
                       (SELECT count(*) FROM organisations WHERE kind = 'hospital') AS hospitals,
                       (SELECT count(*) FROM availability_counts) AS count_rows,
                       (SELECT count(*) FROM slots s JOIN organisations o ON o.id = s.hospital_id
                        JOIN clinic_sessions cs ON cs.id = s.session_id
                        WHERE o.region_code LIKE '3401%' AND cs.service_date BETWEEN $1 AND $2) AS query_slots
                """,
                date.fromisoformat(QUERY["from"]),
                date.fromisoformat(QUERY["to"]),
            )
        )
    finally:
        await conn.close()
    figures["seconds"] = {str(k): round(v, 1) for k, v in timings.items()}
    return figures


# --- the reader subprocess ------------------------------------------------------------------


async def read_loop(base_url: str, token: str, mode: str, count: int) -> dict[str, Any]:
    """GET the city query one request at a time; ``count`` requests, or until stdin closes (0)."""
    stop = threading.Event()
    if count == 0:

        def watch() -> None:
            while sys.stdin.buffer.read(4096):
                pass
            stop.set()

        threading.Thread(target=watch, daemon=True).start()
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    size = items = 0
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as c:
        if mode in ("me", "search"):
            # /v1/me: the API's floor; search: a family doctor's GET /v1/pool/slots?limit=20.
            path, params, extra = (
                ("/v1/me", {}, {}) if mode == "me" else ("/v1/pool/slots", {"limit": 20}, {})
            )
        else:
            first = await c.get("/v1/availability", params=QUERY)
            first.raise_for_status()
            body = first.json()
            size, items = len(first.content), len(body["items"])
            etag, cursor = first.headers["etag"], body["cursor"]
            path = "/v1/availability"
            params = QUERY | {"since": cursor} if mode == "since" else QUERY
            extra = {"If-None-Match": etag} if mode == "304" else {}
        for _ in range(20):  # warm up
            (await c.get(path, params=params)).raise_for_status()
        while not stop.is_set() and (count == 0 or len(latencies) < count):
            started = time.perf_counter()
            r = await c.get(path, params=params, headers=extra)
            _ = r.content
            latencies.append(time.perf_counter() - started)
            statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
    return {"latencies": latencies, "statuses": statuses, "bytes": size, "items": items}


async def run_reader(
    base_url: str, token: str, mode: str, count: int
) -> tuple[asyncio.subprocess.Process, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--reader", base_url, token, mode, str(count),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    return proc, proc.communicate


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else float("nan")


def describe(name: str, result: dict[str, Any]) -> str:
    lat = result["latencies"]
    return (
        f"{name:34} {len(lat):6} {quantile(lat, 0.5):8.1f} {quantile(lat, 0.99):8.1f} "
        f"{quantile(lat, 1.0):8.1f}   {result['statuses']}"
    )


async def reopen(url: str, slot_ids: list[int]) -> None:
    """Cancel the rush's referrals and hold its slots for the pool again, for a second rush."""
    conn = await asyncpg.connect(rush.plain(url))
    try:
        async with conn.transaction():
            await conn.execute(
                "UPDATE referrals SET status = 'cancelled', cancelled_at = now(), cancelled_by = 'hospital' "
                "WHERE slot_id = ANY($1::bigint[]) AND status = 'booked'",
                slot_ids,
            )
            await conn.execute("UPDATE slots SET status = 'reserved' WHERE id = ANY($1::bigint[])", slot_ids)
    finally:
        await conn.close()


# --- main -----------------------------------------------------------------------------------


async def run(args: Namespace) -> bool:
    started = time.perf_counter()
    pg = await rush.provision()
    servers: list[rush.ServerProcess] = []
    try:
        await upgrade(pg.url)
        settings = Settings(run_loops=False, log_json=False)
        db = Database(pg.url, pool_size=2)
        try:
            world = await build_world(db, Crypto.from_settings(settings), ManualClock(START))
        finally:
            await db.dispose()
        province = await seed_province(pg.url, args)
        print(
            f"seeded the province in {time.perf_counter() - started:.1f} s: {province['slots']:,} slots, "
            f"{province['sessions']:,} sessions ({province['exam_sessions']:,} examination blocks), "
            f"{province['hospitals']} hospitals, "
            f"{province['count_rows']:,} availability_counts rows; the query covers "
            f"{province['query_slots']:,} slots (step seconds {province['seconds']})",
            flush=True,
        )
        booking_server = await rush.ServerProcess.start(pg.url, START, args.concurrency, max_seconds=1800)
        servers.append(booking_server)
        if args.same_server:
            read_server = booking_server
        else:
            read_server = await rush.ServerProcess.start(pg.url, START, 5, max_seconds=1800)
            servers.append(read_server)
        slot_ids, total = await rush.seed_over_http(
            booking_server.base_url, world, pool_slots=args.rush_slots, residents=args.rush_clients
        )
        token = world.keys["platform"]
        print(
            f"rush department-day: {total} slots, {len(slot_ids)} in the pool; reads on "
            f"{'the booking server' if args.same_server else 'their own API replica'}",
            flush=True,
        )

        results: dict[str, dict[str, Any]] = {}
        for mode in ("full", "304", "since", "me", "search"):
            who = world.keys[rush.BOOKER] if mode == "search" else token
            _, communicate = await run_reader(read_server.base_url, who, mode, args.requests)
            out, _ = await communicate()
            results[f"quiet {mode}"] = json.loads(out)

        async def during_rush(mode: str) -> rush.Phase:
            proc, communicate = await run_reader(read_server.base_url, token, mode, 0)
            reading = asyncio.create_task(communicate())
            await asyncio.sleep(2)  # the reader is warm and looping
            rush_args = Namespace(clients=args.rush_clients, concurrency=args.concurrency, time_limit=300.0)
            bodies = rush.rush_bodies(world, slot_ids, rush_args, ManualClock(START))
            phase = await rush.http_rush(
                "booking rush", booking_server.base_url, bodies, world.auth(rush.BOOKER), rush_args
            )
            assert proc.stdin is not None
            proc.stdin.close()
            out, _ = await reading
            results[f"during the booking rush, {mode}"] = json.loads(out)
            return phase

        phase = await during_rush("full")
        async with httpx.AsyncClient(base_url=read_server.base_url, timeout=30) as c:
            r = await c.get(
                "/v1/availability",
                params=QUERY
                | {"hospital_id": world.ids["city_hospital"], "department_code": rush.DEPARTMENT},
                headers={"Authorization": f"Bearer {token}"},
            )
            rush_items = [i for i in r.json()["items"] if i["service_date"] == rush.DAY.isoformat()]
        feed_booked = sum(i["booked"] for i in rush_items)
        feed_open = sum(i["pool_open"] for i in rush_items)
        if args.floor:
            await reopen(pg.url, slot_ids)
            await during_rush("me")

        quiet = results["quiet full"]
        print()
        print(
            f"availability: GET /v1/availability?region=340100&from=2026-03-09&to=2026-03-15 "
            f"({quiet['items']} items, {quiet['bytes']:,} bytes) on {province['slots']:,} slots, "
            f"{os.cpu_count()} CPUs"
        )
        print(f"{'phase':34} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}   statuses")
        for name, result in results.items():
            print(describe(name, result))
        print(
            f"booking rush meanwhile: {len(phase.outcomes)}/{phase.attempts} attempts in {phase.wall:.1f} s, "
            f"{phase.successes} booked ({phase.successes / phase.wall:.1f}/s), "
            f"{len(phase.outcomes) / phase.wall:.1f} attempts/s, p50 {phase.latency_ms(0.5):.1f} ms, "
            f"p99 {phase.latency_ms(0.99):.1f} ms; outcomes {phase.counts()}"
        )
        ok = feed_booked == phase.successes and feed_open == len(slot_ids) - phase.successes
        print(
            f"feed after the rush: booked {feed_booked}, pool_open {feed_open} for the rush department-day; "
            f"201s {phase.successes} of {len(slot_ids)} pool slots  [{'OK' if ok else 'FAIL'}]"
        )
        print(f"total run time {time.perf_counter() - started:.1f} s")

        def p99(name: str) -> float:
            return quantile(results[name]["latencies"], 0.99) if name in results else float("nan")

        feed, floor = p99("during the booking rush, full"), p99("during the booking rush, me")
        search, quiet_floor = p99("quiet search"), p99("quiet me")
        print(
            f"availability: feed_p99_ms={feed:.1f} floor_p99_ms={floor:.1f} feed_ratio={feed / floor:.2f} "
            f"search_p99_ms={search:.1f} quiet_floor_p99_ms={quiet_floor:.1f} "
            f"search_ratio={search / quiet_floor:.2f} hospitals={province['hospitals']} slots={province['slots']} "
            f"integrity={'ok' if ok else 'FAIL'}"
        )
        return ok
    finally:
        for server in servers:
            await server.stop()
        try:
            await pg.drop()
        finally:
            pg.stop()


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--reader":
        _, _, base_url, token, mode, count = sys.argv
        print(json.dumps(asyncio.run(read_loop(base_url, token, mode, int(count)))))
        return
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cities", type=int, default=8)
    parser.add_argument("--hospitals-per-city", type=int, default=16)
    parser.add_argument("--departments", type=int, default=10)
    parser.add_argument(
        "--exam-departments", type=int, default=1, help="imaging departments per hospital (CT, MRI blocks)"
    )
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--slots-per-session", type=int, default=14)
    parser.add_argument("--requests", type=int, default=400, help="requests per quiet phase")
    parser.add_argument("--rush-clients", type=int, default=3000)
    parser.add_argument("--rush-slots", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=30)
    parser.add_argument("--same-server", action="store_true", help="reads share the booking server")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="then a second rush while reading GET /v1/me: the latency floor of any authenticated GET",
    )
    args = parser.parse_args()
    if not 1 <= args.cities <= 16 or not 1 <= args.hospitals_per_city <= 50:
        parser.error("--cities must be 1..16 and --hospitals-per-city 1..50")
    if not 7 <= args.days <= 60 or not 1 <= args.slots_per_session <= 32 or not 1 <= args.departments <= 40:
        parser.error("--days must be 7..60, --slots-per-session 1..32, --departments 1..40")
    if not 0 <= args.exam_departments <= args.departments:
        parser.error("--exam-departments must be 0..--departments")
    if not 1 <= args.rush_slots <= 2000 or not args.rush_slots <= args.rush_clients <= 20_000:
        parser.error("--rush-slots must be 1..2000 and --rush-clients between it and 20000")
    if not 1 <= args.concurrency <= 60:
        parser.error("--concurrency must be 1..60")
    sys.exit(0 if asyncio.run(run(args)) else 1)


if __name__ == "__main__":
    main()
