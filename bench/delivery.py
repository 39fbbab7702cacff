"""Webhook delivery: throughput to a local receiver and commit-to-delivery delay.

Run from the repository root:

    .venv/bin/python bench/delivery.py [--endpoints E] [--events N] [--latency-events L] [--rate R]

What it does, all on loopback and all cleaned up afterwards:

1. PostgreSQL as in bench/booking_rush.py: a fresh database ``bench_<random>`` on
   DATABASE_URL's server, or the embedded server in a temporary directory.
   Migrations to head, then ``bench/world.py``'s ``build_world`` plus E extra
   hospitals, each with one webhook endpoint (loopback allowed explicitly: plain http to
   loopback) subscribed to every event type. One endpoint per hospital because
   an endpoint's deliveries go strictly one after another: parallelism is
   across endpoints, up to the dispatcher's ``webhook_concurrency`` (16).
2. The receiver: ``contracts/receiver.py`` (the one shipped to hospitals) in a
   subprocess, given every endpoint's secret, so each request is really
   verified (HMAC, timestamp) and deduplicated; it prints one line per event.
   This script reads those lines as they come; the arrival time of a line is
   the delivery time.
3. Delay: the dispatcher (``Dispatcher.run``: LISTEN/NOTIFY wake-ups, a 5 s
   poll as backstop, real clock) runs in this process while L events are
   emitted one transaction each, round-robin over the hospitals, at R per
   second. Delay = arrival at the receiver - the moment ``commit`` returned.
4. Throughput: with the dispatcher stopped, N events are written (a backlog,
   as after a receiver outage); then the dispatcher starts and the time from
   its start to the last arrival gives events per second.
5. Integrity from the database: every delivery ``delivered``, each with
   exactly one attempt; and every event printed exactly once by the receiver.

Exit status 1 if an integrity check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import asyncpg  # noqa: E402
from booking_rush import plain, provision  # noqa: E402

from bench.world import build_world, returned_data  # noqa: E402
from service.kit.clock import Clock, ManualClock  # noqa: E402
from service.kit.config import Settings  # noqa: E402
from service.kit.context import Actor  # noqa: E402
from service.kit.crypto import Crypto  # noqa: E402
from service.kit.db import Database  # noqa: E402
from service.models.migrations import upgrade  # noqa: E402
from service.outbox.dispatcher import Dispatcher, http_client, listen_dsn  # noqa: E402
from service.outbox.endpoints import register_endpoint  # noqa: E402
from service.outbox.events import emit  # noqa: E402
from service.outbox.urls import check_url  # noqa: E402
from service.registry.schemas import OrganisationIn  # noqa: E402
from service.registry.service import create_organisation  # noqa: E402


class ReceiverProcess:
    """contracts/receiver.py; ``arrivals`` maps webhook-id to the time its line was read."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.arrivals: dict[str, float] = {}
        self.duplicates = 0
        self.changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self, secrets: list[str], port: int) -> None:
        args = [str(ROOT / "contracts" / "receiver.py"), "--port", str(port)]
        for secret in secrets:
            args += ["--secret", secret]
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        assert self.proc.stderr is not None
        line = (await asyncio.wait_for(self.proc.stderr.readline(), timeout=30)).decode().strip()
        self.url = line.removeprefix("listening on ")
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            now = time.perf_counter()
            msg_id = json.loads(raw)["webhook_id"]
            if msg_id in self.arrivals:
                self.duplicates += 1
            self.arrivals[msg_id] = now
            self.changed.set()

    async def wait_for(self, ids: set[str], seconds: float) -> bool:
        deadline = time.perf_counter() + seconds
        while not ids <= self.arrivals.keys():
            self.changed.clear()
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=remaining)
            except TimeoutError:
                return False
        return True

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()


async def seed(
    db: Database, settings: Settings, endpoints: int, receiver_url: str
) -> tuple[list[int], list[str]]:
    """E hospitals with one endpoint each; their ids and the endpoints' secrets."""
    crypto = Crypto.from_settings(settings)
    clock = ManualClock(datetime.now(UTC))
    await build_world(db, crypto, clock)
    actor = Actor.system("bench", now=clock.now())
    hospitals: list[int] = []
    secrets: list[str] = []
    for i in range(endpoints):

        async def work(session: Any, i: int = i) -> tuple[int, str]:
            org = await create_organisation(
                session=session,
                actor=actor,
                org=OrganisationIn(code=f"H-BENCH-{i}", name=f"基准医院{i}", kind="hospital",
                                   region_code="340104", hospital_level=3, hospital_tier="city"),
            )  # fmt: skip
            _, secret = await register_endpoint(
                session=session, actor=actor, crypto=crypto, hospital_id=org.id,
                url=await check_url(f"{receiver_url}/his-{i}", allow_loopback=True),
                event_types=["referral.booked", "referral.cancelled", "slots.returned"],
            )  # fmt: skip
            return org.id, secret

        hospital_id, secret = await db.run(work)
        hospitals.append(hospital_id)
        secrets.append(secret)
    return hospitals, secrets


async def emit_one(db: Database, hospital_id: int, i: int) -> int:
    event = await db.run(
        lambda s: emit(
            session=s,
            hospital_id=hospital_id,
            event_type="slots.returned",
            data=returned_data(i),
            at=datetime.now(UTC),
        )
    )
    return event.id


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(args: argparse.Namespace) -> bool:
    pg = await provision()
    receiver = ReceiverProcess()
    ok = True
    try:
        await upgrade(pg.url)
        settings = Settings(run_loops=False, log_json=False, webhook_allow_loopback=True)
        db = Database(pg.url, pool_size=settings.db_pool_size)
        stop = asyncio.Event()
        # Secrets are made at registration and endpoints need the receiver's URL: reserve a
        # loopback port, register against it, then start the receiver there with the secrets.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        hospitals, secrets = await seed(db, settings, args.endpoints, f"http://127.0.0.1:{port}")
        await receiver.start(secrets, port)
        crypto = Crypto.from_settings(settings)
        async with http_client(settings) as http:
            dispatcher = Dispatcher(db, Clock(), crypto, settings, http)

            def start_dispatcher() -> asyncio.Task[None]:
                stop.clear()
                return asyncio.create_task(dispatcher.run(stop=stop, listen_url=listen_dsn(pg.url)))

            # Delay: the dispatcher idles on LISTEN; events arrive at --rate.
            dispatcher_task = start_dispatcher()
            await asyncio.sleep(0.5)
            committed: dict[str, float] = {}
            for i in range(args.latency_events):
                event_id = await emit_one(db, hospitals[i % len(hospitals)], i)
                committed[f"evt_{event_id}"] = time.perf_counter()
                await asyncio.sleep(1 / args.rate)
            if not await receiver.wait_for(set(committed), seconds=60):
                print("delay phase: not every event arrived within 60 s", file=sys.stderr)
                ok = False
            delays = [
                (receiver.arrivals[k] - t) * 1000 for k, t in committed.items() if k in receiver.arrivals
            ]
            stop.set()
            await dispatcher_task

            # Throughput: a backlog, then the dispatcher starts.
            backlog: list[str] = []
            writers = 8

            async def writer(w: int) -> None:
                for i in range(w, args.events, writers):
                    backlog.append(f"evt_{await emit_one(db, hospitals[i % len(hospitals)], i)}")

            await asyncio.gather(*(writer(w) for w in range(writers)))
            started = time.perf_counter()
            dispatcher_task = start_dispatcher()
            if not await receiver.wait_for(set(backlog), seconds=args.time_limit):
                print("throughput phase: not every event arrived in time", file=sys.stderr)
                ok = False
            elapsed = max(receiver.arrivals[k] for k in backlog if k in receiver.arrivals) - started
            stop.set()
            await dispatcher_task

        conn = await asyncpg.connect(plain(pg.url))
        try:
            not_delivered = await conn.fetchval(
                "SELECT count(*) FROM webhook_deliveries WHERE status <> 'delivered'"
            )
            deliveries = await conn.fetchval("SELECT count(*) FROM webhook_deliveries")
            attempts = await conn.fetchval("SELECT count(*) FROM webhook_attempts")
        finally:
            await conn.close()
        await db.dispose()

        total = args.latency_events + args.events
        print()
        print(
            f"endpoints: {args.endpoints} (one per hospital), dispatcher concurrency {settings.webhook_concurrency}"
        )
        print(f"delay, commit -> verified at the receiver, {len(delays)} events at {args.rate:g}/s:")
        print(f"  p50 {statistics.median(delays):.1f} ms   p99 {percentile(delays, 0.99):.1f} ms   "
              f"max {max(delays):.1f} ms")  # fmt: skip
        print(
            f"throughput, backlog of {args.events} events: {elapsed:.2f} s -> {args.events / elapsed:.0f} events/s"
        )
        print(f"integrity: {deliveries} deliveries for {total} events, {not_delivered} not delivered, "
              f"{attempts} attempts, {receiver.duplicates} duplicates at the receiver")  # fmt: skip
        if not_delivered or deliveries != total or attempts != total or receiver.duplicates:
            ok = False
        return ok
    finally:
        await receiver.stop()
        try:
            await pg.drop()
        finally:
            pg.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--endpoints", type=int, default=8, help="hospitals, one endpoint each (default 8)")
    parser.add_argument(
        "--events", type=int, default=2000, help="backlog for the throughput phase (default 2000)"
    )
    parser.add_argument(
        "--latency-events", type=int, default=300, help="events for the delay phase (default 300)"
    )
    parser.add_argument(
        "--rate", type=float, default=50.0, help="events per second in the delay phase (default 50)"
    )
    parser.add_argument(
        "--time-limit", type=float, default=300.0, help="seconds for the backlog (default 300)"
    )
    args = parser.parse_args()
    if not 1 <= args.endpoints <= 64:
        parser.error("--endpoints must be between 1 and 64")
    if not 1 <= args.events <= 100_000 or not 1 <= args.latency_events <= 10_000:
        parser.error("--events must be 1..100000 and --latency-events 1..10000")
    sys.exit(0 if asyncio.run(run(args)) else 1)


if __name__ == "__main__":
    main()
