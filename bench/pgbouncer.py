"""Two replicas behind PgBouncer in transaction pooling mode, booking the same slots.

Run from the repository root (needs the ``pgbouncer`` binary, e.g. Debian's package):

    .venv/bin/python bench/pgbouncer.py [--clients N] [--slots M] [--concurrency C]
                                        [--server-pool P] [--replica-pool R]

What it does, all on loopback and all cleaned up afterwards:

1. PostgreSQL as in ``booking_rush.py`` (a fresh database on DATABASE_URL's server, or
   the embedded server), migrated, with ``bench/world.py``'s world.
2. PgBouncer on a free port, ``pool_mode = transaction``, at most P server connections
   to that database (``default_pool_size``), started with ``-u postgres`` when run as root.
3. Two replicas of the service (``rush_server.py``), each with a database pool of R
   connections to PgBouncer and ``SLOTPOOL_DB_BEHIND_PGBOUNCER=true`` (no statement
   caches, a fresh name for every prepared statement; docs/performance.md). So the
   replicas hold 2 × R client connections, PgBouncer at most P server connections.
4. The rush of ``booking_rush.py``: N attempts on M pool slots by C clients, attempt i
   sent to replica i mod 2, so the attempts on one slot reach both replicas.
5. Integrity from the database, as in ``booking_rush.py`` (0 oversold, 201s == booked
   slots), and the most server connections PgBouncer opened (``pg_stat_activity``).

The last line: ``pgbouncer: replicas=2 attempts/s=… p50_ms=… p99_ms=… oversold=…
client_connections=… server_connections_max=… integrity=ok|FAIL``. Exit status 1 when an
integrity check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from bench.booking_rush import (  # noqa: E402
    BOOKER,
    START,
    Phase,
    ServerProcess,
    http_rush,
    integrity,
    plain,
    provision,
    rush_bodies,
    seed_over_http,
)
from bench.serving import free_port  # noqa: E402
from bench.world import build_world  # noqa: E402
from service.kit.clock import ManualClock  # noqa: E402
from service.kit.config import Settings  # noqa: E402
from service.kit.crypto import Crypto  # noqa: E402
from service.kit.db import Database  # noqa: E402
from service.models.migrations import upgrade  # noqa: E402


class PgBouncer:
    """A PgBouncer in front of one database, in transaction pooling mode, in a temporary directory."""

    def __init__(self, database_url: str, server_pool: int) -> None:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).exists():
            raise SystemExit("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
        self.binary = binary
        self.url = make_url(database_url)
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="slotpool-pgbouncer-"))
        os.chmod(self.dir, 0o777)
        user = self.url.username or "postgres"
        (self.dir / "users.txt").write_text(f'"{user}" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            f"""[databases]
{self.url.database} = host={self.url.host or "127.0.0.1"} port={self.url.port or 5432} dbname={self.url.database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.dir / "users.txt"}
pool_mode = transaction
default_pool_size = {server_pool}
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits
logfile = {self.dir / "pgbouncer.log"}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        as_root = ["-u", "postgres"] if os.geteuid() == 0 else []
        # -q: the log goes to its file only, not to our stderr.
        self.proc = subprocess.Popen([self.binary, "-q", *as_root, str(self.dir / "pgbouncer.ini")])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {(self.dir / 'pgbouncer.log').read_text()[-2000:]}")
            try:
                with __import__("socket").create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        return self.url.set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


async def server_connections(url: str, stop: asyncio.Event) -> int:
    """The most connections of the service's application name seen on PostgreSQL while running."""
    conn = await asyncpg.connect(plain(url))
    most = 0
    try:
        while not stop.is_set():
            seen = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'slotpool'"
            )
            most = max(most, int(seen))
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    return most


async def run(args: argparse.Namespace) -> bool:
    pg = await provision()
    bouncer = PgBouncer(pg.url, args.server_pool)
    replicas: list[ServerProcess] = []
    try:
        await upgrade(pg.url)
        clock = ManualClock(START)
        db = Database(pg.url, pool_size=2)
        try:
            world = await build_world(db, Crypto.from_settings(Settings(run_loops=False)), clock)
        finally:
            await db.dispose()
        pooled_url = bouncer.start()
        os.environ["SLOTPOOL_DB_BEHIND_PGBOUNCER"] = "true"
        replicas = [
            await ServerProcess.start(
                pooled_url, START, args.replica_pool, max_seconds=4 * args.time_limit + 120
            )
            for _ in range(2)
        ]
        slot_ids, total = await seed_over_http(
            replicas[0].base_url, world, pool_slots=args.slots, residents=args.clients
        )
        print(
            f"PgBouncer on port {bouncer.port} (transaction pooling, {args.server_pool} server connections); "
            f"2 replicas x {args.replica_pool} client connections; {len(slot_ids)} pool slots of {total}; "
            "rushing...",
            flush=True,
        )
        bodies = rush_bodies(world, slot_ids, args, clock)
        halves = [bodies[0::2], bodies[1::2]]
        args.concurrency = max(1, args.concurrency // 2)
        watching = asyncio.Event()
        watcher = asyncio.create_task(server_connections(pg.url, watching))
        started = time.perf_counter()
        phases = await asyncio.gather(
            *(
                http_rush(f"replica {n}", replica.base_url, half, world.auth(BOOKER), args)
                for n, (replica, half) in enumerate(zip(replicas, halves, strict=True))
            )
        )
        wall = time.perf_counter() - started
        watching.set()
        most_server = await watcher
        for replica in replicas:
            await replica.stop()
        checks = await integrity(pg.url, slot_ids)
        both = Phase(
            "both", outcomes=phases[0].outcomes + phases[1].outcomes, wall=wall, attempts=len(bodies)
        )
        booked = checks.distinct_booked_slots
        consistent = booked == checks.booked_referrals == checks.slots_marked_booked
        ok = (
            checks.oversold == 0
            and checks.residents_doubled == 0
            and consistent
            and both.successes <= booked <= both.successes + both.unknown
        )
        print(f"outcomes: {both.counts()}")
        print(
            f"integrity: oversold {checks.oversold}, 201s {both.successes}, booked slots {booked}, "
            f"booked referrals {checks.booked_referrals} [{'OK' if ok else 'FAIL'}]"
        )
        print(
            f"pgbouncer: replicas=2 attempts/s={len(both.outcomes) / wall:.1f} "
            f"p50_ms={both.latency_ms(0.5):.1f} p99_ms={both.latency_ms(0.99):.1f} oversold={checks.oversold} "
            f"client_connections={2 * args.replica_pool} server_connections_max={most_server} "
            f"integrity={'ok' if ok else 'FAIL'}"
        )
        return ok
    finally:
        for replica in replicas:
            await replica.stop()
        bouncer.stop()
        try:
            await pg.drop()
        finally:
            pg.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=600, help="booking attempts (default 600)")
    parser.add_argument("--slots", type=int, default=120, help="pool slots (default 120)")
    parser.add_argument("--concurrency", type=int, default=64, help="clients over both replicas (default 64)")
    parser.add_argument(
        "--server-pool", type=int, default=8, help="PgBouncer's server connections (default 8)"
    )
    parser.add_argument(
        "--replica-pool", type=int, default=32, help="each replica's connections (default 32)"
    )
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds for the rush (default 60)")
    args = parser.parse_args()
    args.residents = args.clients
    sys.exit(0 if asyncio.run(run(args)) else 1)


if __name__ == "__main__":
    main()
