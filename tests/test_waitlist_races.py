"""The waiting list under concurrency, against the real PostgreSQL: the database decides.

A cancellation racing bookings of its slot while an entry waits; an accept racing the expiry
of its offer; two replicas' offer loops at once. Never two live claims on one slot.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import date, timedelta
from functools import partial
from typing import Any

import httpx
from sqlalchemy import func, select

from service.models.audit import AuditEntry
from service.models.referrals import Referral
from service.models.slots import Slot
from service.models.waitlist import WaitlistOffer
from service.referrals.waitlist.offers import expire_one_offer, run_waitlist_pass
from tests.factories import book, booking, pool_slots, push, session_item, sign, waitlist_entry

DAY = date(2026, 3, 10)


async def _later(delay: float, work: Any) -> Any:
    await asyncio.sleep(delay)
    return await work


async def live_claims(db) -> dict[int, tuple[str, int, int]]:
    """Per slot: its status, its booked referrals and its pending offers."""

    async def read(session: Any) -> dict[int, tuple[str, int, int]]:
        booked = (
            select(func.count())
            .where(Referral.slot_id == Slot.id, Referral.status == "booked")
            .scalar_subquery()
        )
        offered = (
            select(func.count())
            .where(WaitlistOffer.slot_id == Slot.id, WaitlistOffer.status == "pending")
            .scalar_subquery()
        )
        rows = await session.execute(select(Slot.id, Slot.status, booked, offered))
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    return await db.run(read)


def assert_one_claim_each(claims: dict[int, tuple[str, int, int]]) -> None:
    for slot_id, (status, booked, offered) in claims.items():
        assert booked + offered <= 1, (slot_id, status, booked, offered)
        if booked:
            assert status == "booked", (slot_id, status)
        if offered:
            assert status == "offered", (slot_id, status)


async def enter(client, world, seq: int, department_id: int) -> dict[str, Any]:
    body = waitlist_entry(
        seq,
        clock=world.clock,
        hospital_id=world.ids["city_hospital"],
        department_id=department_id,
        from_date=DAY,
    )
    r = await client.post("/v1/waitlist/entries", json=body, headers=world.auth("chc_a"))
    assert r.status_code == 201, r.text
    entry: dict[str, Any] = r.json()
    return entry


async def test_a_cancellation_racing_bookings_and_an_offer_leaves_one_claim(client, world, db, live_server):
    await push(client, world, [session_item("S1", DAY, slots=10)])
    await sign(client, world, list(range(1, 13)))
    slots = await pool_slots(client, world)
    slot_id, dept = slots[0]["slot_id"], slots[0]["department"]["id"]
    await enter(client, world, 2, dept)
    referral = await book(client, world, booking(slot_id, 1, clock=world.clock))

    async def cancel(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post(
            f"/v1/referrals/{referral['reference']}/cancel",
            json={"reason": "改期"},
            headers=world.auth("chc_a"),
        )

    async def attempt(http: httpx.AsyncClient, seq: int) -> httpx.Response:
        return await http.post(
            "/v1/referrals", json=booking(slot_id, seq, clock=world.clock), headers=world.auth("chc_a")
        )

    async with httpx.AsyncClient(base_url=live_server, timeout=30) as http:
        cancelled, *bookings = await asyncio.gather(
            cancel(http), *(attempt(http, seq) for seq in range(3, 13))
        )
    assert cancelled.status_code == 200, cancelled.text
    codes = Counter((r.status_code, r.json()["code"]) for r in bookings)
    # The freed slot was held for the waiting entry in the cancellation's own transaction.
    assert set(codes) <= {(409, "slot_taken"), (409, "busy")}, codes
    claims = await live_claims(db)
    assert_one_claim_each(claims)
    assert claims[slot_id] == ("offered", 0, 1)


async def test_an_accept_racing_the_expiry_has_exactly_one_winner(client, world, db, crypto, live_server):
    outcomes = []
    # The loop starts a little later each round, so that rounds fall on either side of the race;
    # whichever wins, exactly one does.
    for round_, head_start in enumerate((0.0, 0.005, 0.01, 0.02, 0.04, 0.08)):
        department = f"R{round_}"
        await push(client, world, [session_item(f"S{round_}", DAY, slots=10, department=department)])
        booker, waiting = 100 + 2 * round_, 101 + 2 * round_
        await sign(client, world, [booker, waiting])
        slots = await pool_slots(client, world)
        slot = next(s for s in slots if s["department"]["code"] == department)
        await enter(client, world, waiting, slot["department"]["id"])
        referral = await book(client, world, booking(slot["slot_id"], booker, clock=world.clock))
        r = await client.post(
            f"/v1/referrals/{referral['reference']}/cancel",
            json={"reason": "改期"},
            headers=world.auth("chc_a"),
        )
        assert r.status_code == 200, r.text
        offer = await db.run(
            lambda s, slot_id=slot["slot_id"]: s.scalar(
                select(WaitlistOffer).where(
                    WaitlistOffer.slot_id == slot_id, WaitlistOffer.status == "pending"
                )
            )
        )
        # The accept reads the clock one second before expiry; the loop, at expiry.
        world.clock.set(offer.expires_at - timedelta(seconds=1))
        async with httpx.AsyncClient(base_url=live_server, timeout=30) as http:
            accepted, expired = await asyncio.gather(
                http.post(f"/v1/waitlist/offers/{offer.reference}/accept", headers=world.auth("chc_a")),
                _later(head_start, db.run(partial(expire_one_offer, crypto=crypto, now=offer.expires_at))),
            )
        status = await db.run(
            lambda s, id_=offer.id: s.scalar(select(WaitlistOffer.status).where(WaitlistOffer.id == id_))
        )
        if accepted.status_code == 201:
            assert (expired, status) == (False, "accepted")
        else:
            assert (accepted.status_code, accepted.json()["code"], expired, status) == (
                409,
                "offer_closed",
                True,
                "expired",
            ), accepted.text
        outcomes.append(status)
        assert_one_claim_each(await live_claims(db))
        world.clock.set(offer.offered_at)
    assert set(outcomes) <= {"accepted", "expired"}


async def test_two_offer_loops_at_once_never_offer_twice(client, world, db, crypto):
    await push(client, world, [session_item("S1", DAY, slots=20, title="chief")])  # 4 pool slots
    await sign(client, world, list(range(1, 13)))
    slots = await pool_slots(client, world)
    assert len(slots) == 4
    dept = slots[0]["department"]["id"]
    for seq in range(5, 13):
        await enter(client, world, seq, dept)
    referrals = [
        await book(client, world, booking(s["slot_id"], i + 1, clock=world.clock))
        for i, s in enumerate(slots)
    ]
    for referral in referrals:
        r = await client.post(
            f"/v1/referrals/{referral['reference']}/cancel",
            json={"reason": "改期"},
            headers=world.auth("chc_a"),
        )
        assert r.status_code == 200, r.text
    assert {v for k, v in (await live_claims(db)).items() if k in {s["slot_id"] for s in slots}} == {
        ("offered", 0, 1)
    }
    world.clock.advance(timedelta(minutes=10))
    first, second = await asyncio.gather(
        run_waitlist_pass(db, world.clock, crypto), run_waitlist_pass(db, world.clock, crypto)
    )
    # Each expired offer was expired by one loop only, and passed on once.
    assert first + second == 4
    expired = await db.run(
        lambda s: s.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "waitlist.expired")
        )
    )
    assert expired == 4
    claims = await live_claims(db)
    assert_one_claim_each(claims)
    pending = await db.run(
        lambda s: s.execute(
            select(WaitlistOffer.entry_id, WaitlistOffer.slot_id).where(WaitlistOffer.status == "pending")
        )
    )
    pending = [tuple(p) for p in pending]
    assert len(pending) == 4
    assert len({e for e, _ in pending}) == 4
    assert len({s for _, s in pending}) == 4


async def test_a_line_read_before_another_offer_committed_skips_that_entry(client, world, db, monkeypatch):
    """Two cancellations at once: the second's line was read before the first's offer committed,
    so it sees the first in line without an offer and locks that entry once the first commits
    (the entry's row is unchanged, so PostgreSQL does not re-check). Found by bench/waitlist.py:
    the partial unique index refused a second pending offer and the cancellation answered 500.
    The stale read is reproduced here by a line that returns the entry already holding an offer;
    the cancellation must succeed and offer its slot to the next in line."""
    from service.models.waitlist import WaitlistEntry
    from service.referrals.waitlist import offers as offers_module

    await push(client, world, [session_item("S1", DAY, slots=10)])
    await sign(client, world, [1, 2, 3, 4])
    slots = await pool_slots(client, world)
    dept = slots[0]["department"]["id"]
    first = await enter(client, world, 3, dept)
    second = await enter(client, world, 4, dept)
    referrals = [
        await book(client, world, booking(s["slot_id"], seq, clock=world.clock))
        for s, seq in zip(slots[:2], (1, 2), strict=True)
    ]
    r = await client.post(
        f"/v1/referrals/{referrals[0]['reference']}/cancel",
        json={"reason": "改期"},
        headers=world.auth("chc_a"),
    )
    assert r.status_code == 200, r.text

    first_id = await db.run(
        lambda s: s.scalar(select(WaitlistEntry.id).where(WaitlistEntry.reference == first["reference"]))
    )
    original = offers_module._eligible_line
    stale_reads = []

    def stale_line(slot: Any, cs: Any, policy: Any, now: Any, *skip: Any) -> Any:
        if not any(skip):  # the first read of the line: as a snapshot from before the first offer
            stale_reads.append(slot.id)
            return select(WaitlistEntry).where(WaitlistEntry.id == first_id).with_for_update()
        return original(slot, cs, policy, now, *skip)

    monkeypatch.setattr(offers_module, "_eligible_line", stale_line)
    r = await client.post(
        f"/v1/referrals/{referrals[1]['reference']}/cancel",
        json={"reason": "改期"},
        headers=world.auth("chc_a"),
    )
    assert r.status_code == 200, r.text
    assert stale_reads == [slots[1]["slot_id"]]
    pending = await db.run(
        lambda s: s.execute(
            select(WaitlistOffer.slot_id, WaitlistEntry.reference)
            .join(WaitlistEntry, WaitlistEntry.id == WaitlistOffer.entry_id)
            .where(WaitlistOffer.status == "pending")
        )
    )
    assert sorted(tuple(p) for p in pending) == sorted(
        [(slots[0]["slot_id"], first["reference"]), (slots[1]["slot_id"], second["reference"])]
    )
    assert_one_claim_each(await live_claims(db))
