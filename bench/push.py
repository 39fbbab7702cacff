"""Session push: a HIS pushes 10,000 slots in one request over real HTTP.

Run from the repository root:

    .venv/bin/python bench/push.py [--rounds N] [--departments D] [--days Y]
                                   [--sessions S] [--slots M] [--quick]

What it does, all on loopback and all cleaned up afterwards:

1. PostgreSQL, the world and the server as in ``booking_rush.py`` (whose helpers this
   imports): a fresh database on DATABASE_URL's server (or the embedded one), migrations to
   head, ``bench/world.py``'s ``build_world`` (the city hospital runs the ``test-city``
   policy: 20 % of outpatient slots, half of them senior), and ``bench/rush_server.py`` in a
   subprocess with its clock fixed at Monday 2 March 2026 09:00 Beijing time.
2. One push is D departments x Y days x S sessions (one doctor each) x M slots of 5
   minutes: by default 10 x 2 x 5 x 100 = 10,000 slots in 100 sessions, 20 department-days
   of 500 slots. The doctors' titles are mixed (so R4's senior share is met) except in the
   first department, whose doctors are all attending physicians (so every push records a
   senior-share shortfall there); the first round's days are close enough that the pool
   window has already opened (a lead-time shortfall). Reservation (R1-R4) and shortfalls
   are part of every push.
3. Each round times, client-side from sending the (pre-encoded) body to having read the
   whole answer: a push of new sessions (new service dates each round: every answer must
   be ``created``), then a re-push of the same sessions with their version bumped and every
   slot's HIS ID changed (every answer ``updated``, every slot row rewritten, held slots
   kept). One untimed small push first warms the server up.
4. Baselines in the same run, interleaved with the rounds on the same database: a scratch
   table with the slots table's columns, defaults and indexes (``LIKE slots INCLUDING
   ALL``) takes the same rows, per round, (a) by asyncpg ``copy_records_to_table`` and (b)
   by a raw upsert, ``INSERT ... SELECT FROM unnest(...) ON CONFLICT (session_id, number)
   DO UPDATE``, first of new rows and then of the same rows with changed HIS IDs, as the
   two pushes do. Each is one statement in its own transaction.
5. Checks the pushes' answers and the database: every slot stored, and the pool holds at
   least the policy's 20 % of every department-day.

Last line: ``push: slots_per_s=... copy_rows_per_s=... upsert_rows_per_s=... ratio_to_upsert=...``
(rates over all timed requests of the run, i.e. total rows / total seconds; the ratio is the
push's rate over the raw upsert's). Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402

from bench.booking_rush import START, ServerProcess, plain, provision  # noqa: E402
from bench.world import World, build_world, session_item  # noqa: E402
from service.kit.clock import ManualClock  # noqa: E402
from service.kit.config import Settings  # noqa: E402
from service.kit.crypto import Crypto  # noqa: E402
from service.kit.db import Database  # noqa: E402
from service.models.migrations import upgrade  # noqa: E402

FIRST_DAY = date(2026, 3, 10)  # public release 3 March 08:00: the pool opened an hour before START
SLOT_MINUTES = 5
TITLES = ("chief", "attending", "associate_chief", "resident", "attending")
HOSPITAL = "city_hospital"
COLUMNS = [
    "session_id",
    "resource_kind",
    "hospital_id",
    "number",
    "external_id",
    "starts_at",
    "ends_at",
    "pool_opens_at",
    "public_at",
    "status",
]


def push_items(args: argparse.Namespace, first_day: date, *, version: int, tag: str) -> list[dict[str, Any]]:
    """One push: departments x days x sessions x slots; slot HIS IDs end with ``tag``."""
    items = []
    for d in range(args.departments):
        for y in range(args.days):
            day = first_day + timedelta(days=y)
            for s in range(args.sessions):
                title = "attending" if d == 0 else TITLES[s % len(TITLES)]
                item = session_item(
                    f"B-{day:%m%d}-{d}-{s}",
                    day,
                    title=title,
                    doctor_code=f"D-{d}-{s}",
                    department=f"DEP{d}",
                    slots=args.slots,
                    first_hour=8,
                    minutes=SLOT_MINUTES,
                    version=version,
                )
                for slot in item["slots"]:
                    slot["external_id"] += tag
                items.append(item)
    return items


async def timed_push(
    client: httpx.AsyncClient, world: World, items: list[dict[str, Any]], expect: str
) -> tuple[float, dict[str, Any]]:
    body = json.dumps({"sessions": items}).encode()
    headers = world.auth(HOSPITAL) | {"Content-Type": "application/json"}
    started = time.perf_counter()
    r = await client.post("/v1/hospital/sessions", content=body, headers=headers)
    elapsed = time.perf_counter() - started
    if r.status_code != 200:
        raise RuntimeError(f"push -> {r.status_code}: {r.text[:500]}")
    answer: dict[str, Any] = r.json()
    wrong = [x for x in answer["results"] if x["result"] != expect]
    if wrong:
        raise RuntimeError(f"push: expected {expect}, got {wrong[:2]}")
    return elapsed, answer


# --- baselines ------------------------------------------------------------------------------


def slot_records(items: list[dict[str, Any]], session_base: int, hospital_id: int) -> list[tuple[Any, ...]]:
    """The pushed slots as slots-table rows (fake session IDs), for the baselines."""
    rows = []
    for n, item in enumerate(items):
        public_at = datetime.fromisoformat(item["public_at"])
        opens = public_at - timedelta(days=1)
        for slot in item["slots"]:
            rows.append(
                (
                    session_base + n,
                    "outpatient",
                    hospital_id,
                    slot["number"],
                    slot["external_id"],
                    datetime.fromisoformat(slot["starts_at"]),
                    datetime.fromisoformat(slot["ends_at"]),
                    opens,
                    public_at,
                    "public",
                )
            )
    return rows


UPSERT = """
INSERT INTO push_scratch (session_id, resource_kind, hospital_id, number, external_id,
                          starts_at, ends_at, pool_opens_at, public_at, status)
SELECT * FROM unnest($1::bigint[], $2::varchar[], $3::bigint[], $4::int[], $5::varchar[],
                     $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::timestamptz[],
                     $10::varchar[])
ON CONFLICT (session_id, number) DO UPDATE SET
    external_id = excluded.external_id, starts_at = excluded.starts_at, ends_at = excluded.ends_at,
    pool_opens_at = excluded.pool_opens_at, public_at = excluded.public_at
"""


async def copy_rows(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> float:
    started = time.perf_counter()
    await conn.copy_records_to_table("push_scratch", records=rows, columns=COLUMNS)
    return time.perf_counter() - started


async def upsert_rows(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> float:
    started = time.perf_counter()
    await conn.execute(UPSERT, *(list(col) for col in zip(*rows, strict=True)))
    return time.perf_counter() - started


# --- checks ---------------------------------------------------------------------------------


async def check_database(url: str, hospital_id: int, expected_slots: int) -> list[str]:
    conn = await asyncpg.connect(plain(url))
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM slots WHERE hospital_id = $1 AND status <> 'withdrawn'", hospital_id
        )
        short = await conn.fetchval(
            """
            SELECT count(*) FROM (
                SELECT s.department_id, s.service_date,
                       count(*) FILTER (WHERE sl.status IN ('reserved', 'booked')) AS held, count(*) AS n
                  FROM clinic_sessions s JOIN slots sl ON sl.session_id = s.id
                 WHERE s.hospital_id = $1 AND s.status = 'active' AND sl.status <> 'withdrawn'
                 GROUP BY 1, 2) d
             WHERE held < ceil(0.20 * n)
            """,
            hospital_id,
        )
    finally:
        await conn.close()
    problems = []
    if stored != expected_slots:
        problems.append(f"{stored} live slots stored, {expected_slots} pushed")
    if short:
        problems.append(f"{short} department-days hold less than 20 % for the pool")
    return problems


# --- main -----------------------------------------------------------------------------------


def rate(rows: int, seconds: list[float]) -> float:
    return rows * len(seconds) / sum(seconds) if seconds else float("nan")


async def run(args: argparse.Namespace) -> bool:
    started = time.perf_counter()
    pg = await provision()
    server: ServerProcess | None = None
    try:
        await upgrade(pg.url)
        settings = Settings(run_loops=False, log_json=False)
        db = Database(pg.url, pool_size=2)
        try:
            world = await build_world(db, Crypto.from_settings(settings), ManualClock(START))
        finally:
            await db.dispose()
        hospital_id = world.ids[HOSPITAL]
        server = await ServerProcess.start(pg.url, START, 2, max_seconds=600)
        conn = await asyncpg.connect(plain(pg.url))
        await conn.execute("CREATE TABLE push_scratch (LIKE slots INCLUDING ALL)")
        per_push = args.departments * args.days * args.sessions * args.slots
        print(
            f"seeded in {time.perf_counter() - started:.1f} s; server {server.base_url}; "
            f"{per_push} slots per push ({args.departments} departments x {args.days} days x "
            f"{args.sessions} sessions x {args.slots} slots), {args.rounds} rounds, {os.cpu_count()} CPUs",
            flush=True,
        )
        times: dict[str, list[float]] = {k: [] for k in ("new", "repush", "copy", "upsert new", "upsert")}
        pool_held = 0
        async with httpx.AsyncClient(base_url=server.base_url, timeout=300) as client:
            warm = push_items(argparse.Namespace(departments=1, days=1, sessions=2, slots=10),
                              FIRST_DAY + timedelta(days=300), version=1, tag="")  # fmt: skip
            await timed_push(client, world, warm, "created")
            for r in range(args.rounds):
                first_day = FIRST_DAY + timedelta(days=args.days * r)
                fresh = push_items(args, first_day, version=1, tag="")
                again = push_items(args, first_day, version=2, tag="-v2")
                new_s, first = await timed_push(client, world, fresh, "created")
                re_s, second = await timed_push(client, world, again, "updated")
                for a, b in zip(first["results"], second["results"], strict=True):
                    if not set(a["pool_slot_numbers"]) <= set(b["pool_slot_numbers"]):
                        raise RuntimeError(f"re-push dropped held slots of {a['external_id']}")
                pool_held += sum(len(x["pool_slot_numbers"]) for x in second["results"])
                shortfalls = sum(len(x["shortfalls"]) for x in second["results"])
                base = (r + 1) * 1_000_000
                copy_s = await copy_rows(conn, slot_records(fresh, base, hospital_id))
                up_new_s = await upsert_rows(conn, slot_records(fresh, base + 500_000, hospital_id))
                up_s = await upsert_rows(conn, slot_records(again, base + 500_000, hospital_id))
                times["new"].append(new_s)
                times["repush"].append(re_s)
                times["copy"].append(copy_s)
                times["upsert new"].append(up_new_s)
                times["upsert"].append(up_s)
                print(
                    f"round {r + 1}: push new {1000 * new_s:.0f} ms, re-push {1000 * re_s:.0f} ms "
                    f"({shortfalls} shortfall rows in the answers); COPY {1000 * copy_s:.0f} ms, "
                    f"upsert new {1000 * up_new_s:.0f} ms, upsert again {1000 * up_s:.0f} ms",
                    flush=True,
                )
        await conn.close()
        await server.stop()
        problems = await check_database(pg.url, hospital_id, per_push * args.rounds + 20)
        push_times = times["new"] + times["repush"]
        upsert_times = times["upsert new"] + times["upsert"]
        push_rate = rate(per_push, push_times)
        copy_rate = rate(per_push, times["copy"])
        upsert_rate = rate(per_push, upsert_times)
        print()
        print(f"{'per request (ms)':<22} {'median':>8} {'min':>8} {'max':>8}")
        for name, values in times.items():
            ms = [1000 * v for v in values]
            print(f"{name:<22} {statistics.median(ms):8.0f} {min(ms):8.0f} {max(ms):8.0f}")
        print(f"pool slots held after the re-pushes: {pool_held} of {per_push * args.rounds}")
        print("checks: " + ("OK" if not problems else "FAIL: " + "; ".join(problems)))
        print(f"total run time {time.perf_counter() - started:.1f} s")
        print(
            f"push: slots_per_s={push_rate:.0f} copy_rows_per_s={copy_rate:.0f} "
            f"upsert_rows_per_s={upsert_rate:.0f} ratio_to_upsert={push_rate / upsert_rate:.3f} "
            f"new_slots_per_s={rate(per_push, times['new']):.0f} "
            f"repush_slots_per_s={rate(per_push, times['repush']):.0f}"
        )
        return not problems
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
    parser.add_argument("--rounds", type=int, default=3, help="rounds of push + re-push (default 3)")
    parser.add_argument("--departments", type=int, default=10, help="departments per push (default 10)")
    parser.add_argument("--days", type=int, default=2, help="service dates per push (default 2)")
    parser.add_argument("--sessions", type=int, default=5, help="sessions per department-day (default 5)")
    parser.add_argument("--slots", type=int, default=100, help="slots per session (default 100)")
    parser.add_argument("--quick", action="store_true", help="one round")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 1
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be between 1 and 20")
    if not 1 <= args.slots <= 100:
        parser.error("--slots must be between 1 and 100 (5-minute slots from 08:00, same day)")
    if args.departments * args.days * args.sessions > 500:
        parser.error("one push holds at most 500 sessions")
    if args.departments * args.days * args.sessions * args.slots > 20_000:
        parser.error("one push holds at most 20,000 slots")
    sys.exit(0 if asyncio.run(run(args)) else 1)


if __name__ == "__main__":
    main()
