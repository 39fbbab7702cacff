"""Concurrent bookings over real HTTP never oversell: the database decides."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import date

import httpx
from sqlalchemy import func, select

from service.models.referrals import Referral
from tests.factories import booking, pool_slots, push, session_item, sign

DAY = date(2026, 3, 10)


async def test_r5_parallel_bookings_over_http_book_each_slot_exactly_once(
    client, world, clock, db, live_server
):
    await push(client, world, [session_item("S1", DAY, slots=20, title="chief")])  # 4 reserved slots
    residents = list(range(1, 61))
    await sign(client, world, residents)
    slots = await pool_slots(client, world)
    assert len(slots) == 4

    async def attempt(http: httpx.AsyncClient, seq: int) -> httpx.Response:
        slot = slots[seq % len(slots)]
        return await http.post(
            "/v1/referrals", json=booking(slot["slot_id"], seq, clock=clock), headers=world.auth("chc_a")
        )

    limits = httpx.Limits(max_connections=30)
    async with httpx.AsyncClient(base_url=live_server, limits=limits, timeout=30) as http:
        responses = await asyncio.gather(*(attempt(http, seq) for seq in residents))

    codes = Counter(
        r.status_code if r.status_code == 201 else (r.status_code, r.json()["code"]) for r in responses
    )
    assert codes[201] == 4, codes
    assert set(codes) <= {201, (409, "slot_taken"), (409, "busy")}, codes
    per_slot = await db.run(
        lambda s: s.execute(
            select(Referral.slot_id, func.count())
            .where(Referral.status == "booked")
            .group_by(Referral.slot_id)
        )
    )
    assert sorted(n for _, n in per_slot) == [1, 1, 1, 1]


async def test_same_idempotency_key_in_parallel_books_once(client, world, clock, db, live_server):
    await push(client, world, [session_item("S1", DAY, slots=10)])
    await sign(client, world, [1])
    [slot, *_] = await pool_slots(client, world)
    payload = booking(slot["slot_id"], 1, clock=clock)
    headers = world.auth("chc_a") | {"Idempotency-Key": "retry-me"}
    async with httpx.AsyncClient(base_url=live_server, timeout=30) as http:
        responses = await asyncio.gather(
            *(http.post("/v1/referrals", json=payload, headers=headers) for _ in range(8))
        )
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["reference"] for r in responses}) == 1
    count = await db.run(lambda s: s.scalar(select(func.count()).select_from(Referral)))
    assert count == 1
