"""Webhook delivery: throughput to local receivers, commit-to-delivery delay, recovery after an outage.

Run from the repository root:

    .venv/bin/python bench/delivery.py [--endpoints E] [--events N] [--latency-events L] [--rate R]
                                       [--outage-seconds S] [--receiver-http 1.1|1.0] [--quick]

What it does, all on loopback and all cleaned up afterwards:

1. PostgreSQL as in bench/booking_rush.py: a fresh database ``bench_<random>`` on
   DATABASE_URL's server, or the embedded server in a temporary directory.
   Migrations to head, then ``bench/world.py``'s ``build_world`` plus E extra
   hospitals, each with one webhook endpoint (loopback allowed explicitly: plain http to
   loopback) subscribed to every event type. One endpoint per hospital because
   an endpoint's deliveries go strictly one after another: parallelism is
   across endpoints, up to the dispatcher's ``webhook_concurrency`` (16).
2. The receiver: ``contracts/receiver.py`` (the one shipped to hospitals, unchanged) in a
   subprocess, given every endpoint's secret, so each request is really verified (HMAC,
   timestamp) and deduplicated; it prints one line per event. This script reads those
   lines as they come; the arrival time of a line is the delivery time. By default it is
   served with HTTP/1.1 keep-alive (``--receiver-http 1.1``: the same handler, with the
   standard library server's ``protocol_version`` set, as a HIS behind a keep-alive TLS
   terminator would be); ``--receiver-http 1.0`` serves it as shipped, one connection per
   request.
3. Delay: the dispatcher (``Dispatcher.run``: LISTEN/NOTIFY wake-ups, a 5 s poll as
   backstop, real clock) runs in this process while L events are emitted one transaction
   each, round-robin over the hospitals, at R per second. Delay = arrival at the receiver
   - the moment ``commit`` returned.
4. Floor (the baseline of the same run): min(N, 1000) signed POSTs sent straight to the
   same receiver by E httpx clients (one kept-alive connection each, one request at a
   time, like the dispatcher's endpoints), without any database. What the machine's HTTP
   path alone allows at this moment; the dispatcher cannot beat it.
5. Throughput: with the dispatcher stopped, N events are written (a backlog, as after a
   receiver outage); then the dispatcher starts and the time from its start to the last
   arrival gives events per second.
6. Outage: the dispatcher runs, the receiver is stopped, and events keep coming at R per
   second (or as fast as one writer manages) for S seconds; then the receiver starts again
   on the same port. Resume = from
   the receiver's return (its listening line) to the arrival of the last event emitted
   during the outage.
7. Integrity from the database and the receiver: every delivery ``delivered`` with
   exactly one successful attempt; every event arrived; each endpoint's events first
   arrived in delivery order; an event printed twice only if it was in flight when the
   receiver stopped (at most one per endpoint: delivery is at least once).

Exit status 1 if an integrity check fails. The last line is the summary:
``delivery: events_per_s=… delay_p99_ms=… resume_s=… floor_events_per_s=…``.
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
import httpx  # noqa: E402
from booking_rush import plain, provision  # noqa: E402

from bench.world import build_world, returned_data  # noqa: E402
from service.kit.clock import Clock, ManualClock  # noqa: E402
from service.kit.config import Settings  # noqa: E402
from service.kit.context import Actor  # noqa: E402
from service.kit.crypto import Crypto  # noqa: E402
from service.kit.db import Database  # noqa: E402
from service.models.migrations import upgrade  # noqa: E402
from service.outbox.dispatcher import Dispatcher, listen_dsn  # noqa: E402
from service.outbox.endpoints import register_endpoint  # noqa: E402
from service.outbox.events import emit  # noqa: E402
from service.outbox.signing import signature_header  # noqa: E402
from service.outbox.urls import check_url  # noqa: E402
from service.registry.schemas import OrganisationIn  # noqa: E402
from service.registry.service import create_organisation  # noqa: E402

# contracts/receiver.py as shipped, served with keep-alive: its handler always sends content-length.
_KEEP_ALIVE = (
    "import http.server, runpy, sys; "
    "http.server.BaseHTTPRequestHandler.protocol_version = 'HTTP/1.1'; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


class ReceiverProcess:
    """contracts/receiver.py; ``arrivals`` maps webhook-id to the time its line was first read."""

    def __init__(self, http: str) -> None:
        self.http = http
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.arrivals: dict[str, float] = {}
        self.order: list[str] = []  # webhook-ids in order of first arrival
        self.duplicates: list[str] = []
        self.changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self, secrets: list[str], port: int) -> float:
        """Start serving on ``port``; returns the moment it listens."""
        args = [str(ROOT / "contracts" / "receiver.py"), "--port", str(port)]
        for secret in secrets:
            args += ["--secret", secret]
        if self.http == "1.1":
            args = ["-c", _KEEP_ALIVE, *args]
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        assert self.proc.stderr is not None
        line = (await asyncio.wait_for(self.proc.stderr.readline(), timeout=30)).decode().strip()
        listening = time.perf_counter()
        if not line.startswith("listening on "):
            raise RuntimeError(f"receiver did not start: {line}")
        self.url = line.removeprefix("listening on ")
        self._reader = asyncio.create_task(self._read(self.proc))
        return listening

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            now = time.perf_counter()
            msg_id = json.loads(raw)["webhook_id"]
            if msg_id in self.arrivals:
                self.duplicates.append(msg_id)
            else:
                self.arrivals[msg_id] = now
                self.order.append(msg_id)
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
            await asyncio.gather(self._reader, return_exceptions=True)  # every line it printed


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


async def emit_one(db: Database, hospital_id: int, i: int) -> str:
    """One event; its webhook-id, remembered with its outbox position for the order check."""
    event = await db.run(
        lambda s: emit(
            session=s,
            hospital_id=hospital_id,
            event_type="slots.returned",
            data=returned_data(i),
            at=datetime.now(UTC),
        )
    )
    POSITIONS[event.webhook_id] = event.id
    return event.webhook_id


# webhook-id -> the event's internal id, which orders each endpoint's queue.
POSITIONS: dict[str, int] = {}


async def emit_at_rate(
    db: Database,
    hospitals: list[int],
    count: int,
    rate: float,
    owner: dict[str, int],
    start: int,
    seconds: float | None = None,
) -> dict[str, float]:
    """``count`` events, one transaction each, round-robin over the hospitals, at ``rate`` per
    second; fewer if ``seconds`` pass first (a loaded machine may not keep up with ``rate``)."""
    committed: dict[str, float] = {}
    began = time.perf_counter()
    for n in range(count):
        if seconds is not None and time.perf_counter() - began >= seconds:
            break
        i = start + n
        key = await emit_one(db, hospitals[i % len(hospitals)], i)
        committed[key] = time.perf_counter()
        owner[key] = i % len(hospitals)
        pause = began + (n + 1) / rate - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
    return committed


async def floor(url: str, secret: str, endpoints: int, requests: int) -> tuple[float, float]:
    """Signed POSTs straight to the receiver, ``endpoints`` kept-alive connections.

    Returns requests per second and this process's CPU microseconds per request.
    """
    body = json.dumps(
        {"type": "slots.returned", "timestamp": datetime.now(UTC).isoformat(), "data": returned_data(0)},
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()

    async def sender(w: int, client: httpx.AsyncClient) -> None:
        for i in range(w, requests, endpoints):
            msg_id = f"floor_{i}"
            timestamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signature_header(
                    [secret], msg_id=msg_id, timestamp=timestamp, body=body
                ),
            }
            r = await client.post(f"{url}/his-{w}", content=body, headers=headers)
            if r.status_code != 204:
                raise RuntimeError(f"floor: the receiver answered {r.status_code}")

    tls = httpx.create_ssl_context()  # loaded once, as the dispatcher does
    clients = [
        httpx.AsyncClient(trust_env=False, verify=tls, limits=httpx.Limits(max_connections=1))
        for _ in range(endpoints)
    ]
    try:
        started = time.perf_counter()
        cpu = time.process_time()
        await asyncio.gather(*(sender(w, c) for w, c in enumerate(clients)))
        return requests / (time.perf_counter() - started), (time.process_time() - cpu) / requests * 1e6
    finally:
        for client in clients:
            await client.aclose()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(args: argparse.Namespace) -> bool:
    pg = await provision()
    receiver = ReceiverProcess(args.receiver_http)
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
        owner: dict[str, int] = {}  # webhook-id -> endpoint index
        async with Dispatcher(db, Clock(), crypto, settings) as dispatcher:

            def start_dispatcher() -> asyncio.Task[None]:
                stop.clear()
                return asyncio.create_task(dispatcher.run(stop=stop, listen_url=listen_dsn(pg.url)))

            # Delay: the dispatcher idles on LISTEN; events arrive at --rate.
            dispatcher_task = start_dispatcher()
            await asyncio.sleep(0.5)
            committed = await emit_at_rate(db, hospitals, args.latency_events, args.rate, owner, 0)
            if not await receiver.wait_for(set(committed), seconds=60):
                print("delay phase: not every event arrived within 60 s", file=sys.stderr)
                ok = False
            delays = [
                (receiver.arrivals[k] - t) * 1000 for k, t in committed.items() if k in receiver.arrivals
            ]
            stop.set()
            await dispatcher_task

            # Floor: the HTTP path alone, now, on this machine.
            floor_n = min(args.events, 1000)  # a rate: a thousand requests measure it well enough
            floor_rate, floor_cpu_us = await floor(receiver.url, secrets[0], args.endpoints, floor_n)

            # Throughput: a backlog, then the dispatcher starts.
            backlog: list[str] = []
            writers = 8

            async def writer(w: int) -> None:
                for i in range(w, args.events, writers):
                    key = await emit_one(db, hospitals[i % len(hospitals)], i)
                    backlog.append(key)
                    owner[key] = i % len(hospitals)

            await asyncio.gather(*(writer(w) for w in range(writers)))
            started = time.perf_counter()
            cpu = time.process_time()
            dispatcher_task = start_dispatcher()
            if not await receiver.wait_for(set(backlog), seconds=args.time_limit):
                print("throughput phase: not every event arrived in time", file=sys.stderr)
                ok = False
            elapsed = max(receiver.arrivals[k] for k in backlog if k in receiver.arrivals) - started
            cpu_us = (time.process_time() - cpu) / args.events * 1e6

            # Outage: the receiver goes away while events keep coming, then comes back.
            await asyncio.sleep(0.5)
            await receiver.stop()
            went = time.perf_counter()
            down = await emit_at_rate(
                db,
                hospitals,
                round(args.outage_seconds * args.rate),
                args.rate,
                owner,
                args.events,
                seconds=args.outage_seconds,
            )
            back = await receiver.start(secrets, port)
            away_s = back - went
            resumed = await receiver.wait_for(set(down), seconds=args.time_limit)
            if not resumed:
                print("outage phase: not every event arrived in time after the return", file=sys.stderr)
                ok = False
            resume_s = max([receiver.arrivals[k] for k in down if k in receiver.arrivals] or [back]) - back
            stop.set()
            await dispatcher_task

        conn = await asyncpg.connect(plain(pg.url))
        try:
            not_delivered = await conn.fetchval(
                "SELECT count(*) FROM webhook_deliveries WHERE status <> 'delivered'"
            )
            deliveries = await conn.fetchval("SELECT count(*) FROM webhook_deliveries")
            not_once = await conn.fetchval(
                "SELECT count(*) FROM webhook_deliveries d WHERE (SELECT count(*) FROM webhook_attempts a "
                "WHERE a.delivery_id = d.id AND a.http_status BETWEEN 200 AND 299) <> 1"
            )
            failed = await conn.fetchval(
                "SELECT count(*) FROM webhook_attempts WHERE http_status IS NULL OR http_status >= 300"
            )
        finally:
            await conn.close()
        await db.dispose()

        out_of_order = 0
        last: dict[int, int] = {}
        for key in receiver.order:
            if key in owner:
                event_id = POSITIONS[key]
                if event_id < last.get(owner[key], 0):
                    out_of_order += 1
                last[owner[key]] = event_id
        unexpected_duplicates = [k for k in receiver.duplicates if k not in down]
        total = args.latency_events + args.events + len(down)
        events_per_s = args.events / elapsed
        print()
        print(f"endpoints: {args.endpoints} (one per hospital), dispatcher concurrency "
              f"{settings.webhook_concurrency}, receiver HTTP/{args.receiver_http}")  # fmt: skip
        print(f"delay, commit -> verified at the receiver, {len(delays)} events at {args.rate:g}/s:")
        print(f"  p50 {statistics.median(delays):.1f} ms   p99 {percentile(delays, 0.99):.1f} ms   "
              f"max {max(delays):.1f} ms")  # fmt: skip
        print(f"floor, {floor_n} signed POSTs straight to the receiver: {floor_rate:.0f} requests/s, "
              f"this process's CPU {floor_cpu_us:.0f} us per request")  # fmt: skip
        print(f"throughput, backlog of {args.events} events: {elapsed:.2f} s -> {events_per_s:.0f} events/s "
              f"({events_per_s / floor_rate:.0%} of the floor), this process's CPU {cpu_us:.0f} us per event")  # fmt: skip
        print(f"outage: receiver down {away_s:.1f} s while {len(down)} events came in; "
              f"queue drained {resume_s:.2f} s after its return")  # fmt: skip
        print(f"integrity: {deliveries} deliveries for {total} events, {not_delivered} not delivered, "
              f"{not_once} without exactly one successful attempt, {failed} failed attempts (outage), "
              f"{len(receiver.duplicates)} printed twice (in flight when the receiver stopped), "
              f"{out_of_order} out of order")  # fmt: skip
        if not_delivered or not_once or deliveries != total or out_of_order:
            ok = False
        if unexpected_duplicates or len(receiver.duplicates) > args.endpoints:
            ok = False
        print(
            f"delivery: events_per_s={events_per_s:.1f} delay_p99_ms={percentile(delays, 0.99):.1f} "
            f"resume_s={resume_s:.2f} floor_events_per_s={floor_rate:.1f}"
        )
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
        "--events", type=int, default=None, help="backlog for the throughput phase (default 2000; quick 1000)"
    )
    parser.add_argument(
        "--latency-events", type=int, default=None, help="events for the delay phase (default 300; quick 100)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=50.0,
        help="events per second in the delay and outage phases (default 50)",
    )
    parser.add_argument(
        "--outage-seconds", type=float, default=None, help="receiver down this long (default 20; quick 10)"
    )
    parser.add_argument(
        "--receiver-http", choices=("1.1", "1.0"), default="1.1", help="1.1 keep-alive (default) or 1.0"
    )
    parser.add_argument("--quick", action="store_true", help="smaller phases: one run well under a minute")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=300.0,
        help="seconds for the backlog and for the resume (default 300)",
    )
    args = parser.parse_args()
    defaults = (1000, 100, 10.0) if args.quick else (2000, 300, 20.0)
    for name, value in zip(("events", "latency_events", "outage_seconds"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not 1 <= args.endpoints <= 64:
        parser.error("--endpoints must be between 1 and 64")
    if not 1 <= args.events <= 100_000 or not 1 <= args.latency_events <= 10_000:
        parser.error("--events must be 1..100000 and --latency-events 1..10000")
    if not 1 <= args.outage_seconds <= 600 or not 0 < args.rate <= 10_000:
        parser.error("--outage-seconds must be 1..600 and --rate 0..10000")
    sys.exit(0 if asyncio.run(run(args)) else 1)


if __name__ == "__main__":
    main()
