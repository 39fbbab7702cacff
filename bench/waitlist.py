"""Waiting list (候补): a fully booked department, residents waiting, cancellations offered on.

Run from the repository root:

    .venv/bin/python bench/waitlist.py [--waiting 1000] [--cancellations 50] [--pool-slots P]
                                       [--concurrency C] [--time-limit S]

What it does, all on loopback and all cleaned up afterwards (docs/waitlist.md):

1. PostgreSQL and the server as in bench/booking_rush.py: a fresh database
   ``bench_<random>`` on DATABASE_URL's server or the embedded server, migrations to
   head, ``bench/world.py``'s ``build_world``, and ``bench/rush_server.py`` in a
   subprocess with a ``ManualClock`` fixed at Monday 2 March 2026 09:00 Beijing time
   (the pool window of 10 March is open; its public release, 3 March 08:00, is not
   due). The server runs no loops; it gets ``SLOTPOOL_WEBHOOK_ALLOW_LOOPBACK=true`` so
   that an endpoint on 127.0.0.1 may be registered.
2. Seeding over HTTP: ``booking_rush.seed_over_http`` pushes one department-day whose
   pool holds P slots (default ``2 x --cancellations``) and syncs P + W signed residents
   of community centre P-A; residents 0..P-1 book every pool slot (the department-day
   is fully booked); residents P..P+W-1 each get a waiting-list entry for that
   department and day (``POST /v1/waitlist/entries`` by P-A, family doctor FD-1).
   Entries count against the R14 limits; the bench world's ``test-city`` policy sets
   none of them (NULL: no limit), so 1,000 entries by one doctor are accepted. That is
   a choice of the bench's world, stated here: under a policy with a doctor's daily
   limit the entries would have to be spread over doctors.
3. The receiver: ``contracts/receiver.py`` (as shipped, served with keep-alive like
   bench/delivery.py does) in a subprocess, with the secret of P-A's endpoint,
   registered over HTTP (``POST /v1/webhooks/endpoints``) for ``waitlist.offered``. The
   dispatcher (``Dispatcher.run``: LISTEN/NOTIFY wake-ups, real clock) runs in this
   process. An arrival is the moment the receiver's line for the event is read here.
4. The cancellations: ``--cancellations`` pool referrals are cancelled
   (``POST /v1/referrals/{reference}/cancel``) by ``--concurrency`` clients at once.
   Each cancellation offers its freed slot to the first in line in its own
   transaction, and the offer's ``waitlist.offered`` event commits with it. Per
   cancellation: cancel -> offer = the arrival at the receiver of the first offer
   made on the cancelled slot (matched by the offer's reference, looked up in
   ``waitlist_offers``) minus the moment the cancel's 200 answer was read (the
   answer follows the commit; measuring from the send would add the request's own
   time). p50 and p99 over the cancellations.
5. Answers: of the first-round offers (in reference order), 3 in 5 are accepted
   (``POST /v1/waitlist/offers/{reference}/accept``, 201 with the referral) and 1 in 5
   declined (``.../decline``: the slot passes to the next in line, a new offer and
   event); the rest get no answer.
6. Expiry: the server's clock stands still (it is fixed by the rush launcher and
   cannot be moved from outside), so the hold cannot run out in the server. The
   offer loop's own function, ``run_waitlist_pass``, is run once in this process with
   a ``ManualClock`` at 09:00 + the policy's hold (10 minutes) + 1 minute, as
   tests/test_waitlist.py does: every offer unanswered by then (the fifth left alone
   and the offers that declines passed on) expires and passes its slot on to the next
   in line. Those new offers are left pending: the run ends inside their hold.
   ``lapsed`` counts offers whose hold ran out (status ``expired``) or that reached
   ``public_at`` (``lapsed``; none here).
7. Integrity from the database: DOUBLE ASSIGNMENTS = slots with more than one active
   claim (booked referrals + pending offers > 1; must be 0); every accepted offer has
   its booked referral on its own slot; every booked referral's slot is ``booked`` and
   every pending offer's slot ``offered``; the accept 201s equal the accepted offers;
   every cancellation was answered 200; every offer's event arrived.

Bounded: ``--time-limit`` seconds for the whole run (then it stops and reports what it
has), the server subprocess exits on its own after an hour even if this script dies.
Exit status 1 if an integrity check fails. The last line is the summary that
bench/run.py reads: ``waitlist: waiting=… cancellations=… offers_made=… accepted=…
declined=… lapsed=… double_assignments=… offer_p50_ms=… offer_p99_ms=…``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import socket
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
from booking_rush import (  # noqa: E402
    BOOKER,
    DAY,
    START,
    ServerProcess,
    check,
    plain,
    provision,
    resident,
    seed_over_http,
    server_pool_size,
)
from delivery import ReceiverProcess, percentile  # noqa: E402

from bench.world import World, booking, build_world  # noqa: E402
from service.kit.clock import Clock, ManualClock  # noqa: E402
from service.kit.config import Settings  # noqa: E402
from service.kit.crypto import Crypto  # noqa: E402
from service.kit.db import Database  # noqa: E402
from service.models.migrations import upgrade  # noqa: E402
from service.outbox.dispatcher import Dispatcher, listen_dsn  # noqa: E402
from service.referrals.waitlist.offers import run_waitlist_pass  # noqa: E402


class OfferReceiver(ReceiverProcess):
    """delivery.py's receiver, which also keeps each ``waitlist.offered`` arrival by offer reference."""

    def __init__(self, http: str) -> None:
        super().__init__(http)
        self.offers: dict[str, float] = {}

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            now = time.perf_counter()
            line = json.loads(raw)
            if line["webhook_id"] in self.arrivals:
                self.duplicates.append(line["webhook_id"])
                continue
            self.arrivals[line["webhook_id"]] = now
            self.order.append(line["webhook_id"])
            if line["type"] == "waitlist.offered":
                self.offers.setdefault(line["data"]["offer"]["reference"], now)
            self.changed.set()

    async def wait_for_offers(self, count: int, seconds: float) -> bool:
        deadline = time.perf_counter() + seconds
        while len(self.offers) < count:
            self.changed.clear()
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=remaining)
            except TimeoutError:
                return False
        return True


async def gather_limited(concurrency: int, jobs: list[Any]) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def one(job: Any) -> Any:
        async with gate:
            return await job

    return await asyncio.gather(*(one(j) for j in jobs))


def entry_body(i: int, world: World, department_id: int) -> dict[str, Any]:
    """Resident i's waiting-list entry for the department-day (as tests/factories.py's, copied)."""
    return {
        "hospital_id": world.ids["city_hospital"],
        "department_id": department_id,
        "from_date": DAY.isoformat(),
        "to_date": DAY.isoformat(),
        "referring_doctor_code": "FD-1",
        "resident": resident(i),
        "consultation": {
            "encounter_id": f"ENC-W{i}",
            "encountered_at": (START - timedelta(hours=1)).isoformat(),
        },
        "diagnoses": ["I10"],
    }


async def offers_in_db(url: str) -> dict[str, int]:
    """Every offer's reference -> its slot, in the order the offers were made."""
    conn = await asyncpg.connect(plain(url))
    try:
        rows = await conn.fetch("SELECT reference, slot_id FROM waitlist_offers ORDER BY id")
    finally:
        await conn.close()
    return {r["reference"]: r["slot_id"] for r in rows}


async def integrity(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(plain(url))
    try:
        values: dict[str, int] = {}
        values["double_assignments"] = await conn.fetchval(
            "SELECT count(*) FROM slots s WHERE "
            "(SELECT count(*) FROM referrals r WHERE r.slot_id = s.id AND r.status = 'booked') + "
            "(SELECT count(*) FROM waitlist_offers o WHERE o.slot_id = s.id AND o.status = 'pending') > 1"
        )
        values["accepted_without_booking"] = await conn.fetchval(
            "SELECT count(*) FROM waitlist_offers o LEFT JOIN referrals r ON r.id = o.referral_id "
            "WHERE o.status = 'accepted' AND (r.id IS NULL OR r.status <> 'booked' OR r.slot_id <> o.slot_id)"
        )
        values["booked_slot_not_booked"] = await conn.fetchval(
            "SELECT count(*) FROM referrals r JOIN slots s ON s.id = r.slot_id "
            "WHERE r.status = 'booked' AND s.status <> 'booked'"
        )
        values["pending_slot_not_offered"] = await conn.fetchval(
            "SELECT count(*) FROM waitlist_offers o JOIN slots s ON s.id = o.slot_id "
            "WHERE o.status = 'pending' AND s.status <> 'offered'"
        )
        for status in ("pending", "accepted", "declined", "expired", "lapsed", "withdrawn"):
            values[status] = await conn.fetchval(
                "SELECT count(*) FROM waitlist_offers WHERE status = $1", status
            )
        values["offers_made"] = await conn.fetchval("SELECT count(*) FROM waitlist_offers")
        values["entries_booked"] = await conn.fetchval(
            "SELECT count(*) FROM waitlist_entries WHERE status = 'booked'"
        )
        values["hold_minutes"] = await conn.fetchval(
            "SELECT waitlist_offer_hold_minutes FROM policies WHERE code = 'test-city'"
        )
    finally:
        await conn.close()
    return values


async def run(args: argparse.Namespace) -> bool:
    began = time.perf_counter()
    deadline = began + args.time_limit

    def left() -> float:
        return max(1.0, deadline - time.perf_counter())

    pg = await provision()
    server: ServerProcess | None = None
    receiver = OfferReceiver("1.1")
    ok = True
    try:
        await upgrade(pg.url)
        settings = Settings(run_loops=False, log_json=False, webhook_allow_loopback=True)
        crypto = Crypto.from_settings(settings)
        clock = ManualClock(START)
        db = Database(pg.url, pool_size=4)
        try:
            world = await build_world(db, crypto, clock)
            pool_size = await server_pool_size(pg.url, max(args.concurrency, 8))
            # The server's settings come from SLOTPOOL_* (rush_server.py): loopback endpoints allowed.
            os.environ["SLOTPOOL_WEBHOOK_ALLOW_LOOPBACK"] = "true"
            server = await ServerProcess.start(pg.url, START, pool_size, max_seconds=3600)
            slot_ids, total = await seed_over_http(
                server.base_url, world, pool_slots=args.pool_slots, residents=args.pool_slots + args.waiting
            )
            if len(slot_ids) < args.cancellations:
                raise RuntimeError(f"the pool holds {len(slot_ids)} slots, fewer than the cancellations")
            limits = httpx.Limits(max_connections=args.concurrency)
            async with httpx.AsyncClient(
                base_url=server.base_url, headers=world.auth(BOOKER), timeout=60, limits=limits
            ) as c:
                first = check(await c.get("/v1/pool/slots", params={"limit": 1}))["items"][0]
                department_id = first["department"]["id"]

                async def book(i: int) -> dict[str, Any]:
                    body = booking(slot_ids[i], i, clock=clock)
                    body["resident"] = resident(i)
                    result: dict[str, Any] = check(await c.post("/v1/referrals", json=body), 201)
                    return result

                referrals = await gather_limited(args.concurrency, [book(i) for i in range(len(slot_ids))])
                left_over = check(await c.get("/v1/pool/slots", params={"limit": 1}))["items"]
                if left_over:
                    raise RuntimeError("the department-day is not fully booked")

                entry_started = time.perf_counter()
                await gather_limited(
                    args.concurrency,
                    [
                        c.post("/v1/waitlist/entries", json=entry_body(i, world, department_id))
                        for i in range(len(slot_ids), len(slot_ids) + args.waiting)
                    ],
                )
                entries_s = time.perf_counter() - entry_started
                conn = await asyncpg.connect(plain(pg.url))
                try:
                    waiting = await conn.fetchval(
                        "SELECT count(*) FROM waitlist_entries WHERE status = 'waiting'"
                    )
                finally:
                    await conn.close()
                if waiting != args.waiting:
                    raise RuntimeError(f"{waiting} entries waiting, not {args.waiting}")

                # The receiver and P-A's endpoint for the offers.
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", 0))
                    port = probe.getsockname()[1]
                endpoint = check(
                    await c.post(
                        "/v1/webhooks/endpoints",
                        json={"url": f"http://127.0.0.1:{port}/fd", "event_types": ["waitlist.offered"]},
                    ),
                    201,
                )
                await receiver.start([endpoint["secret"]], port)
                print(
                    f"seeded in {time.perf_counter() - began:.1f} s: {total} slots, {len(slot_ids)} in the "
                    f"pool, all booked; {waiting} entries waiting ({args.waiting / entries_s:.0f} entries/s); "
                    f"cancelling {args.cancellations}...",
                    flush=True,
                )

                stop = asyncio.Event()
                async with Dispatcher(db, Clock(), crypto, settings) as dispatcher:
                    dispatching = asyncio.create_task(
                        dispatcher.run(stop=stop, listen_url=listen_dsn(pg.url))
                    )
                    await asyncio.sleep(0.5)
                    answered: dict[int, float] = {}  # cancelled slot -> the moment its 200 was read
                    failed: collections.Counter[str] = collections.Counter()  # refused cancellations

                    async def cancel(referral: dict[str, Any]) -> None:
                        r = await c.post(
                            f"/v1/referrals/{referral['reference']}/cancel", json={"reason": "患者改期"}
                        )
                        at = time.perf_counter()
                        if r.status_code == 200:
                            answered[referral["slot"]["id"]] = at
                        else:
                            failed[f"{r.status_code} {r.text[:200]}"] += 1

                    cancelled = referrals[: args.cancellations]
                    await asyncio.wait_for(
                        gather_limited(args.concurrency, [cancel(r) for r in cancelled]), timeout=left()
                    )
                    if not await receiver.wait_for_offers(args.cancellations, left()):
                        print("not every first-round offer arrived in time", file=sys.stderr)
                        ok = False
                    slot_of = await offers_in_db(pg.url)
                    first_offer: dict[int, str] = {}
                    for reference, slot_id in slot_of.items():
                        first_offer.setdefault(slot_id, reference)
                    delays = [
                        (receiver.offers[first_offer[slot]] - at) * 1000
                        for slot, at in answered.items()
                        if slot in first_offer and first_offer[slot] in receiver.offers
                    ]

                    # Answers: 3 in 5 accepted, 1 in 5 declined, 1 in 5 left to expire.
                    round_one = sorted(first_offer[slot] for slot in answered if slot in first_offer)
                    accept = [ref for n, ref in enumerate(round_one) if n % 5 < 3]
                    decline = [ref for n, ref in enumerate(round_one) if n % 5 == 3]

                    async def answer(reference: str, verb: str) -> int:
                        r = await c.post(f"/v1/waitlist/offers/{reference}/{verb}")
                        return r.status_code

                    accepted_201 = sum(
                        s == 201
                        for s in await gather_limited(args.concurrency, [answer(r, "accept") for r in accept])
                    )
                    declined_200 = sum(
                        s == 200
                        for s in await gather_limited(
                            args.concurrency, [answer(r, "decline") for r in decline]
                        )
                    )

                    # Expiry: the loop's function with a clock past the hold (the server's stands still).
                    hold = (await integrity(pg.url))["hold_minutes"]
                    later = ManualClock(START + timedelta(minutes=hold + 1))
                    expired_now = await run_waitlist_pass(db, later, crypto)
                    made = len(await offers_in_db(pg.url))
                    if not await receiver.wait_for_offers(made, left()):
                        print("not every offer's event arrived in time", file=sys.stderr)
                        ok = False
                    stop.set()
                    await dispatching
        finally:
            await db.dispose()
        if server is not None:
            await server.stop()

        checks = await integrity(pg.url)
        lapsed = checks["expired"] + checks["lapsed"]
        print()
        print(
            f"waiting list: {args.waiting} residents waiting for one fully booked department-day "
            f"({len(slot_ids)} pool slots), {args.cancellations} cancellations by {args.concurrency} "
            f"clients, {os.cpu_count()} CPUs, total {time.perf_counter() - began:.1f} s"
        )
        print(
            f"cancel (200 read) -> waitlist.offered verified at the receiver, {len(delays)} offers: "
            f"p50 {statistics.median(delays) if delays else float('nan'):.1f} ms   "
            f"p99 {percentile(delays, 0.99) if delays else float('nan'):.1f} ms   "
            f"max {max(delays) if delays else float('nan'):.1f} ms"
        )
        print(
            f"offers: {checks['offers_made']} made; {checks['accepted']} accepted ({accepted_201} accept 201s), "
            f"{checks['declined']} declined ({declined_200} decline 200s, each passed on), {checks['expired']} "
            f"expired after the {hold}-minute hold ({expired_now} by the loop's pass, each passed on), "
            f"{checks['lapsed']} lapsed at public_at, {checks['pending']} pending, {checks['withdrawn']} withdrawn"
        )
        print(f"events: {len(receiver.offers)} waitlist.offered arrivals for {checks['offers_made']} offers, "
              f"{len(receiver.duplicates)} printed twice")  # fmt: skip
        problems = {
            "double assignments (booked referrals + pending offers > 1 on a slot)": checks[
                "double_assignments"
            ],
            "accepted offers without their booked referral on their slot": checks["accepted_without_booking"],
            "booked referrals whose slot is not 'booked'": checks["booked_slot_not_booked"],
            "pending offers whose slot is not 'offered'": checks["pending_slot_not_offered"],
            "accept 201s != accepted offers": int(accepted_201 != checks["accepted"]),
            "entries booked != accepted offers": int(checks["entries_booked"] != checks["accepted"]),
            "offers whose event did not arrive": checks["offers_made"] - len(receiver.offers),
            "cancellations not answered 200": sum(failed.values()),
            "cancellations without a measured offer": args.cancellations - len(delays),
        }
        for answer_, count_ in failed.items():
            print(f"  cancellation refused x{count_}: {answer_}")
        print("integrity (from the database and the receiver):")
        for label, count in problems.items():
            print(f"  {label}: {count}  [{'OK' if count == 0 else 'FAIL'}]")
        ok = ok and not any(problems.values())
        p50 = statistics.median(delays) if delays else float("nan")
        p99 = percentile(delays, 0.99) if delays else float("nan")
        print(
            f"waitlist: waiting={args.waiting} cancellations={args.cancellations} "
            f"offers_made={checks['offers_made']} accepted={checks['accepted']} declined={checks['declined']} "
            f"lapsed={lapsed} pending={checks['pending']} double_assignments={checks['double_assignments']} "
            f"offer_p50_ms={p50:.1f} offer_p99_ms={p99:.1f} integrity={'ok' if ok else 'FAIL'}"
        )
        return ok
    finally:
        if server is not None:
            await server.stop()
        await receiver.stop()
        try:
            await pg.drop()
        finally:
            pg.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--waiting", type=int, default=1000, help="residents on the list (default 1000)")
    parser.add_argument("--cancellations", type=int, default=50, help="pool referrals cancelled (default 50)")
    parser.add_argument("--pool-slots", type=int, help="pool slots, all booked (default 2 x --cancellations)")
    parser.add_argument("--concurrency", type=int, default=10, help="simultaneous clients (default 10)")
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds for the run (default 600)")
    args = parser.parse_args()
    args.pool_slots = args.pool_slots or 2 * args.cancellations
    if not 1 <= args.waiting <= 20_000:
        parser.error("--waiting must be between 1 and 20000")
    if not 1 <= args.cancellations <= args.pool_slots <= 2_000:
        parser.error("--cancellations must be between 1 and --pool-slots (at most 2000)")
    if not 1 <= args.concurrency <= 50:
        parser.error("--concurrency must be between 1 and 50")
    try:
        ok = asyncio.run(asyncio.wait_for(run(args), timeout=args.time_limit + 120))
    except TimeoutError:
        print(f"time limit of {args.time_limit:g} s (+120 s to clean up) reached", file=sys.stderr)
        ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
