"""Booking rush: many family-doctor clients race for the same pool slots over real HTTP.

Run from the repository root:

    .venv/bin/python bench/booking_rush.py [--clients N] [--slots M] [--residents R]
                                           [--concurrency C] [--time-limit S]

What it does, all on loopback and all cleaned up afterwards:

1. PostgreSQL: with DATABASE_URL set, a fresh database ``bench_<random>`` on
   that server (dropped at the end); otherwise the embedded server in a
   temporary directory under /tmp (deleted at the end). Migrations to head.
2. Seed one hospital-day: ``bench/world.py``'s ``build_world`` (regions,
   organisations, the 20 %-half-senior ``test-city`` policy for the city
   hospital, API keys), then over HTTP: one push of ``ceil(M / 0.20)`` slots of
   5 minutes (sessions of at most 100 slots, senior doctors, one department,
   10 March 2026) so that the pool holds exactly M slots, and one contract
   sync of R signed residents of community centre P-A (R >= N: a resident may
   hold one active referral per department-day, so every attempt books for a
   different resident).
3. The server: ``bench/rush_server.py`` in a subprocess, i.e. ``create_app``
   with a ``ManualClock`` fixed at Monday 2 March 2026 09:00 Beijing time (the
   pool window for 10 March is open, the public release is not due), served by
   uvicorn on 127.0.0.1 and a free port. A subprocess rather than an in-process
   task so the load generator does not share the server's event loop and GIL:
   in-process, every client-side JSON encode and socket read would be charged
   to the server's latency. Both processes still share the machine's cores
   (and PostgreSQL), which the figures include. The server's settings are the
   defaults (plus any SLOTPOOL_* environment, e.g. SLOTPOOL_LOCK_TIMEOUT_MS)
   with loops off and a database pool of min(C, (max_connections - 10) / 2),
   warmed up before the rush. The bookable slot IDs come from GET /v1/pool/slots.
4. The rush: N booking attempts (POST /v1/referrals) issued by C workers, each
   with its own ``httpx.AsyncClient`` (one keep-alive connection each, like C
   separate family-doctor apps). Attempts are grouped ``ceil(N / M)`` per slot
   in order, so at any moment about C / ceil(N / M) slots are each contended by
   ceil(N / M) simultaneous requests; exactly one of them can win.
   Latency is client-side, from sending the request to reading the whole answer.
5. Integrity from the database: OVERSOLD slots (more than one referral in
   status 'booked'; must be 0) and "number of 201s == distinct booked slots"
   (when some attempts went unanswered, e.g. at the time limit, they may have
   committed server-side, so then 201s <= booked <= 201s + unanswered).
6. Baseline: the same M slots set back to 'reserved', then the same attempt
   pattern with C asyncpg connections (one per worker) each claiming its slot
   with a single ``UPDATE slots SET status='booked' WHERE id=$1 AND
   status='reserved' RETURNING id`` in autocommit. That is the floor of what a
   race-safe claim costs; the HTTP path additionally authenticates, checks
   every rule (scope, window, contract, consultation, disease list,
   duplicates), encrypts, inserts the referral, an event and an audit row, and
   records every refusal in a second transaction.

Bounded: at most ``--clients`` attempts, at most ``--time-limit`` seconds per
phase (unfinished attempts are counted as ``timeout``), and the server
subprocess exits on its own after a few minutes even if this script dies.
Exit status 1 if an integrity check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from bench.world import (  # noqa: E402
    TEST_POLICY,
    World,
    booking,
    build_world,
    contract_row,
    session_item,
    synthetic_id,
)
from service.kit.clock import SHANGHAI, ManualClock  # noqa: E402
from service.kit.config import Settings  # noqa: E402
from service.kit.crypto import Crypto  # noqa: E402
from service.kit.db import Database  # noqa: E402
from service.models.migrations import upgrade  # noqa: E402

# Monday 2 March 2026, 09:00 Beijing time, as in tests/conftest.py.
START = datetime(2026, 3, 2, 9, 0, tzinfo=SHANGHAI)
# Public release 3 March 08:00 (7 days before); the pool opened 2 March 08:00 (24 h lead).
DAY = date(2026, 3, 10)
SLOTS_PER_SESSION = 100  # 5-minute slots from 08:00: the last one starts at 16:15, same day
SLOT_MINUTES = 5
DEPARTMENT = "CARD"
BOOKER = "chc_a"  # community centre P-A in 340102: in the city scope of the city hospital


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def resident(i: int) -> dict[str, str]:
    """A distinct synthetic resident for every i (synthetic_id only varies 1000 per birth date)."""
    born = date(1950, 1, 1) + timedelta(days=i // 1000)
    return {"id_number": synthetic_id("340102", born=born, seq=i % 1000), "name": f"张{i}"}


# --- PostgreSQL ---------------------------------------------------------------------


@dataclass
class Postgres:
    admin_url: str
    url: str
    name: str
    embedded: Any = None
    tmp: str | None = None

    async def drop(self) -> None:
        admin = await asyncpg.connect(plain(self.admin_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await admin.close()

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.cleanup()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


async def provision() -> Postgres:
    external = os.environ.get("DATABASE_URL")
    server = tmp = None
    if external:
        admin_url = external
        where = "DATABASE_URL"
    else:
        from service.kit import embedded

        tmp = tempfile.mkdtemp(prefix="slotpool-bench-", dir="/tmp")
        server = await asyncio.to_thread(embedded.start, Path(tmp), cleanup="delete")
        admin_url = embedded.server_url(server, "postgres")
        where = f"embedded server in {tmp}"
    name = f"bench_{uuid.uuid4().hex[:8]}"
    pg = Postgres(admin_url=admin_url, url="", name=name, embedded=server, tmp=tmp)
    try:
        admin = await asyncpg.connect(plain(admin_url))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
    except BaseException:
        pg.stop()
        raise
    pg.url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    print(f"PostgreSQL: database {name} on the {where}", flush=True)
    return pg


# --- the server subprocess ----------------------------------------------------------


class ServerProcess:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.base_url = f"http://127.0.0.1:{port}"

    @classmethod
    async def start(
        cls,
        url: str,
        now: datetime,
        pool_size: int,
        max_seconds: float,
        *,
        workers: int = 1,
        script: str = "rush_server.py",
    ) -> ServerProcess:
        """The service (or, with ``script="bare_server.py"``, the bare baseline) in a subprocess.

        ``pool_size`` is the database connections of the whole server, split among ``workers``.
        """
        options = ["--database-url", url, "--workers", str(workers)]
        options += ["--pool-size", str(max(2, pool_size // workers)), "--max-seconds", str(max_seconds)]
        if script == "rush_server.py":
            options += ["--now", now.isoformat()]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "bench" / script),
            *options,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
            port = int(line)
            await asyncio.wait_for(cls._listening(proc, port), timeout=60)
        except BaseException:
            await cls(proc, 0).stop()
            raise RuntimeError(f"the {script} subprocess did not start") from None
        return cls(proc, port)

    @staticmethod
    async def _listening(proc: asyncio.subprocess.Process, port: int) -> None:
        while proc.returncode is None:
            try:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
                    await c.get("/healthz")
                return
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        raise RuntimeError("exited")

    async def stop(self) -> None:
        if self.proc.returncode is not None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout=15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


# --- seeding ------------------------------------------------------------------------


def check(r: httpx.Response, status: int = 200) -> Any:
    if r.status_code != status:
        raise RuntimeError(f"{r.request.method} {r.request.url.path} -> {r.status_code}: {r.text[:500]}")
    return r.json()


async def seed_over_http(
    base_url: str, world: World, *, pool_slots: int, residents: int
) -> tuple[list[int], int]:
    """Push one department-day and sync residents; return the bookable slot IDs and the slot total."""
    ratio: Decimal = TEST_POLICY["ratio"]
    total = math.ceil(pool_slots / ratio)  # ceil(ratio * total) == pool_slots
    sessions = []
    for n, first in enumerate(range(0, total, SLOTS_PER_SESSION), start=1):
        sessions.append(
            session_item(
                f"RUSH-{n}",
                DAY,
                title="chief" if n % 2 else "associate_chief",
                doctor_code=f"D-RUSH-{n}",
                department=DEPARTMENT,
                slots=min(SLOTS_PER_SESSION, total - first),
                first_hour=8,
                minutes=SLOT_MINUTES,
            )
        )
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as c:
        body = check(
            await c.post(
                "/v1/hospital/sessions", json={"sessions": sessions}, headers=world.auth("city_hospital")
            )
        )
        rejected = [r for r in body["results"] if r["result"] != "created"]
        if rejected:
            raise RuntimeError(f"session push rejected: {rejected[:2]}")
        for first in range(0, residents, 500):
            rows = []
            for i in range(first, min(residents, first + 500)):
                row = contract_row(i)
                row["resident"] = resident(i)
                rows.append(row)
            body = check(
                await c.post("/v1/contracts/sync", json={"contracts": rows}, headers=world.auth("platform"))
            )
            if body["created"] != len(rows):
                raise RuntimeError(f"contract sync: {body['rejected']} rejected: {body['results'][:2]}")
        slot_ids: list[int] = []
        cursor = None
        while True:
            params: dict[str, Any] = {
                "hospital_id": world.ids["city_hospital"],
                "service_date": DAY.isoformat(),
                "limit": 500,
            }
            if cursor is not None:
                params["cursor"] = cursor
            page = check(await c.get("/v1/pool/slots", params=params, headers=world.auth(BOOKER)))
            slot_ids += [s["slot_id"] for s in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    return slot_ids, total


# --- running attempts ---------------------------------------------------------------


@dataclass
class Outcome:
    latency: float  # seconds
    key: str  # "201", "409 slot_taken", "claimed", "not claimed", "error ..."
    success: bool


@dataclass
class Phase:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    wall: float = 0.0
    attempts: int = 0

    @property
    def successes(self) -> int:
        return sum(o.success for o in self.outcomes)

    @property
    def unknown(self) -> int:
        """Attempts whose fate the client never saw (time limit, transport error): may have won."""
        errors = sum(o.key.startswith("error") for o in self.outcomes)
        return self.attempts - len(self.outcomes) + errors

    def latency_ms(self, q: float) -> float:
        values = sorted(o.latency for o in self.outcomes)
        if not values:
            return float("nan")
        return 1000 * values[max(0, math.ceil(q * len(values)) - 1)]

    def counts(self) -> dict[str, int]:
        counted = collections.Counter(o.key for o in self.outcomes)
        missing = self.attempts - len(self.outcomes)
        if missing:
            counted["timeout (not finished)"] += missing
        return dict(sorted(counted.items()))


async def run_workers(
    phase: Phase,
    attempts: int,
    concurrency: int,
    open_worker: Callable[[], Awaitable[Any]],
    close_worker: Callable[[Any], Awaitable[None]],
    attempt: Callable[[Any, int], Awaitable[tuple[str, bool]]],
    time_limit: float,
) -> None:
    """``concurrency`` workers take attempts 0..attempts-1 in order; each has its own connection."""
    phase.attempts = attempts
    handles = await asyncio.gather(*(open_worker() for _ in range(concurrency)))
    next_index = iter(range(attempts))

    async def worker(handle: Any) -> None:
        for i in next_index:
            started = time.perf_counter()
            try:
                key, ok = await attempt(handle, i)
            except Exception as exc:
                key, ok = f"error {type(exc).__name__}", False
            phase.outcomes.append(Outcome(time.perf_counter() - started, key, ok))

    started = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(worker(h) for h in handles)), timeout=time_limit)
    except TimeoutError:
        print(f"{phase.name}: time limit of {time_limit:g} s reached", flush=True)
    finally:
        phase.wall = time.perf_counter() - started
        await asyncio.gather(*(close_worker(h) for h in handles), return_exceptions=True)


def slot_for(i: int, slot_ids: list[int], per_slot: int) -> int:
    return slot_ids[(i // per_slot) % len(slot_ids)]


async def http_rush(
    name: str, base_url: str, bodies: list[dict[str, Any]], headers: dict[str, str], args: argparse.Namespace
) -> Phase:
    """``bodies`` POSTed to /v1/referrals by ``args.concurrency`` clients, one keep-alive connection each."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)

    async def open_client() -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60, limits=limits)

    async def close_client(c: httpx.AsyncClient) -> None:
        await c.aclose()

    # Warm up: open every client's connection and the server's database pool.
    warm = [await open_client() for _ in range(args.concurrency)]
    for _ in range(3):
        await asyncio.gather(*(c.get("/v1/pool/slots", params={"limit": 1}) for c in warm))
    await asyncio.gather(*(close_client(c) for c in warm))

    async def attempt(c: httpx.AsyncClient, i: int) -> tuple[str, bool]:
        r = await c.post("/v1/referrals", json=bodies[i])
        if r.status_code == 201:
            return "201", True
        try:
            code = r.json().get("code", "")
        except ValueError:
            code = ""
        return f"{r.status_code} {code}".strip(), False

    phase = Phase(name)
    await run_workers(
        phase, len(bodies), args.concurrency, open_client, close_client, attempt, args.time_limit
    )
    return phase


def rush_bodies(
    world: World, slot_ids: list[int], args: argparse.Namespace, clock: ManualClock
) -> list[dict[str, Any]]:
    """Attempt i books slot ``slot_for(i)`` for resident i, each slot contended ~clients/slots times."""
    per_slot = math.ceil(args.clients / len(slot_ids))
    bodies = []
    for i in range(args.clients):
        body = booking(slot_for(i, slot_ids, per_slot), i, clock=clock)
        body["resident"] = resident(i)
        bodies.append(body)
    return bodies


# --- integrity ------------------------------------------------------------------------


@dataclass
class Integrity:
    oversold: int
    distinct_booked_slots: int
    booked_referrals: int
    slots_marked_booked: int
    residents_doubled: int


async def integrity(url: str, slot_ids: list[int]) -> Integrity:
    conn = await asyncpg.connect(plain(url))
    try:
        oversold = await conn.fetchval(
            "SELECT count(*) FROM (SELECT slot_id FROM referrals WHERE status = 'booked' "
            "GROUP BY slot_id HAVING count(*) > 1) AS o"
        )
        distinct, referrals = await conn.fetchrow(
            "SELECT count(DISTINCT slot_id), count(*) FROM referrals WHERE status = 'booked'"
        )
        marked = await conn.fetchval(
            "SELECT count(*) FROM slots WHERE id = ANY($1::bigint[]) AND status = 'booked'", slot_ids
        )
        doubled = await conn.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM referrals WHERE status = 'booked' "
            "GROUP BY resident_id, department_id, service_date HAVING count(*) > 1) AS d"
        )
    finally:
        await conn.close()
    return Integrity(oversold, distinct, referrals, marked, doubled)


async def reset_slots(url: str, slot_ids: list[int]) -> None:
    conn = await asyncpg.connect(plain(url))
    try:
        await conn.execute("UPDATE slots SET status = 'reserved' WHERE id = ANY($1::bigint[])", slot_ids)
    finally:
        await conn.close()


async def server_pool_size(url: str, concurrency: int) -> int:
    """One database connection per in-flight request at most; stay well under max_connections."""
    conn = await asyncpg.connect(plain(url))
    try:
        max_connections = int(await conn.fetchval("SHOW max_connections"))
    finally:
        await conn.close()
    return max(2, min(concurrency, (max_connections - 10) // 2))


# --- report -----------------------------------------------------------------------------


def report(
    http: Phase,
    base: Phase,
    checks: Integrity,
    base_marked: int,
    args: argparse.Namespace,
    pool: int,
    total: int,
) -> bool:
    per_slot = math.ceil(args.clients / pool)
    print()
    print(
        f"booking rush: {args.clients} attempts, concurrency {args.concurrency}, {pool} pool slots "
        f"(of {total} in one department-day), ~{per_slot} attempts per slot, "
        f"{args.residents} signed residents, {os.cpu_count()} CPUs"
    )
    rows = [
        ("wall time (s)", lambda p: f"{p.wall:.2f}"),
        ("attempts finished", lambda p: f"{len(p.outcomes)}/{p.attempts}"),
        ("successes (201 / claimed)", lambda p: f"{p.successes}"),
        ("successes per second", lambda p: f"{p.successes / p.wall:.1f}" if p.wall else "-"),
        ("attempts per second", lambda p: f"{len(p.outcomes) / p.wall:.1f}" if p.wall else "-"),
        ("latency p50 (ms)", lambda p: f"{p.latency_ms(0.50):.1f}"),
        ("latency p99 (ms)", lambda p: f"{p.latency_ms(0.99):.1f}"),
        ("latency max (ms)", lambda p: f"{p.latency_ms(1.0):.1f}"),
    ]
    width = 28
    print(f"{'':{width}} {'slotpool POST /v1/referrals':>28} {'bare app UPDATE':>16}")
    for label, fmt in rows:
        print(f"{label:{width}} {fmt(http):>28} {fmt(base):>16}")
    print("outcomes:")
    for name, phase in (("HTTP", http), ("baseline", base)):
        print(f"  {name:9}" + ", ".join(f"{k}: {v}" for k, v in phase.counts().items()))
    ok_oversold = checks.oversold == 0 and checks.residents_doubled == 0
    booked = checks.distinct_booked_slots
    consistent = booked == checks.booked_referrals == checks.slots_marked_booked
    # A request the client gave up on may still have committed; then only bounds can be checked.
    ok_http = consistent and http.successes <= booked <= http.successes + http.unknown
    ok_base = base.successes <= base_marked <= base.successes + base.unknown and base_marked <= pool
    print("integrity (from the database):")
    print(
        f"  OVERSOLD slots (>1 'booked' referral): {checks.oversold}; residents with >1 booked "
        f"referral in the department-day: {checks.residents_doubled}  "
        f"[{'OK' if ok_oversold else 'FAIL'}]"
    )
    print(
        f"  HTTP 201s {http.successes} {'<=' if http.unknown else '=='} distinct booked slots {booked} "
        f"(booked referrals {checks.booked_referrals}, slots in status 'booked' "
        f"{checks.slots_marked_booked})"
        + (f"; {http.unknown} unanswered attempts may have won" if http.unknown else "")
        + f"  [{'OK' if ok_http else 'FAIL'}]"
    )
    print(
        f"  baseline claims {base.successes} vs slots left 'booked' {base_marked} (<= {pool} pool slots)  "
        f"[{'OK' if ok_base else 'FAIL'}]"
    )
    ok = ok_oversold and ok_http and ok_base
    rate = len(http.outcomes) / http.wall if http.wall else 0.0
    base_rate = len(base.outcomes) / base.wall if base.wall else 0.0
    p99, base_p99 = http.latency_ms(0.99), base.latency_ms(0.99)
    p50, base_p50 = http.latency_ms(0.50), base.latency_ms(0.50)
    print(
        f"rush: attempts/s={rate:.1f} baseline_http={base_rate:.1f} "
        f"ratio={rate / base_rate if base_rate else 0:.3f} "
        f"p50_ms={p50:.1f} baseline_p50_ms={base_p50:.1f} p50_ratio={p50 / base_p50 if base_p50 else 0:.2f} "
        f"p99_ms={p99:.1f} baseline_p99_ms={base_p99:.1f} p99_ratio={p99 / base_p99 if base_p99 else 0:.2f} "
        f"oversold={checks.oversold} workers={args.workers} concurrency={args.concurrency} "
        f"integrity={'ok' if ok else 'FAIL'}"
    )
    return ok


# --- main -------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> bool:
    started = time.perf_counter()
    pg = await provision()
    server: ServerProcess | None = None
    try:
        await upgrade(pg.url)
        settings = Settings(run_loops=False, log_json=False)
        clock = ManualClock(START)
        db = Database(pg.url, pool_size=2)
        try:
            world = await build_world(db, Crypto.from_settings(settings), clock)
        finally:
            await db.dispose()
        pool_size = await server_pool_size(pg.url, args.concurrency)
        server = await ServerProcess.start(pg.url, START, pool_size, max_seconds=3600, workers=args.workers)
        slot_ids, total = await seed_over_http(
            server.base_url, world, pool_slots=args.slots, residents=args.residents
        )
        if not slot_ids:
            raise RuntimeError("the pool holds no bookable slot")
        if len(slot_ids) != args.slots:
            print(f"note: the pool holds {len(slot_ids)} slots, not {args.slots}", file=sys.stderr)
        print(
            f"seeded in {time.perf_counter() - started:.1f} s: {total} slots, {len(slot_ids)} in the pool; "
            f"server {server.base_url} ({args.workers} worker(s), database pool {pool_size}); rushing...",
            flush=True,
        )
        bodies = rush_bodies(world, slot_ids, args, clock)
        http = await http_rush("slotpool", server.base_url, bodies, world.auth(BOOKER), args)
        await server.stop()
        checks = await integrity(pg.url, slot_ids)

        # The bare app, started the same way, the same attempts by the same client code.
        await reset_slots(pg.url, slot_ids)
        server = await ServerProcess.start(
            pg.url,
            START,
            pool_size,
            max_seconds=3600,
            workers=args.workers,
            script="bare_server.py",
        )
        base = await http_rush("bare app", server.base_url, bodies, {}, args)
        await server.stop()
        conn = await asyncpg.connect(plain(pg.url))
        try:
            base_marked = await conn.fetchval(
                "SELECT count(*) FROM slots WHERE id = ANY($1::bigint[]) AND status = 'booked'", slot_ids
            )
        finally:
            await conn.close()
        print(f"total run time {time.perf_counter() - started:.1f} s")
        # The report's last line is the summary that bench/run.py reads.
        return report(http, base, checks, base_marked, args, len(slot_ids), total)
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
    parser.add_argument("--clients", type=int, default=200, help="booking attempts (default 200)")
    parser.add_argument("--slots", type=int, default=40, help="pool slots to contend for (default 40)")
    parser.add_argument("--residents", type=int, help="signed residents to sync (default: --clients)")
    parser.add_argument("--concurrency", type=int, default=50, help="simultaneous clients (default 50)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per phase (default 60)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes, the same for service and bare app (default 1)",
    )
    args = parser.parse_args()
    args.residents = args.residents or args.clients
    if not 1 <= args.clients <= 20_000:
        parser.error("--clients must be between 1 and 20000")
    if not 1 <= args.slots <= 2_000:
        parser.error("--slots must be between 1 and 2000")
    if args.residents < args.clients:
        parser.error("--residents must be >= --clients: each attempt books for a distinct resident")
    if args.residents > 100_000:
        parser.error("--residents must be <= 100000")
    if not 1 <= args.concurrency <= 80:
        parser.error("--concurrency must be between 1 and 80 (the embedded server allows 100 connections)")
    sys.exit(0 if asyncio.run(run(args)) else 1)


if __name__ == "__main__":
    main()
