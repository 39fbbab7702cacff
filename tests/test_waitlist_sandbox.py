"""The waiting list follows the sandbox clock (docs/sandbox.md): an integrator walks an offer to
its expiry by moving the clock through the API, never the wall clock."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from service.kit.clock import SandboxClock
from service.kit.config import Settings
from service.referrals.waitlist.offers import run_waitlist_pass
from service.sandbox.service import read_offset
from tests.factories import book, booking, pool_slots, push, session_item, sign, to_local, waitlist_entry

DAY = date(2026, 3, 10)


@pytest.fixture
def settings() -> Settings:
    return Settings(
        run_loops=False, log_json=False, lock_timeout_ms=5000, db_pool_size=20, webhook_allow_loopback=True,
        sandbox=True,
    )  # fmt: skip


async def test_an_offer_expires_on_the_sandbox_clock_and_passes_on(client, world, db, crypto):
    await push(client, world, [session_item("S1", DAY, slots=10)])
    await sign(client, world, [1, 2, 3])
    [slot, *_] = await pool_slots(client, world)
    for seq in (2, 3):
        body = waitlist_entry(
            seq, clock=world.clock, hospital_id=world.ids["city_hospital"],
            department_id=slot["department"]["id"], from_date=DAY,
        )  # fmt: skip
        r = await client.post("/v1/waitlist/entries", json=body, headers=world.auth("chc_a"))
        assert r.status_code == 201, r.text
    referral = await book(client, world, booking(slot["slot_id"], 1, clock=world.clock))
    r = await client.post(
        f"/v1/referrals/{referral['reference']}/cancel", json={"reason": "改期"}, headers=world.auth("chc_a")
    )
    assert r.status_code == 200, r.text
    [offer] = (await client.get("/v1/waitlist/offers", headers=world.auth("chc_a"))).json()["items"]

    # Only the sandbox clock moves: past the hold, the accept is refused.
    r = await client.post(
        "/v1/sandbox/clock",
        json={"now": (to_local(offer["expires_at"]) + timedelta(seconds=1)).isoformat()},
        headers=world.auth("chc_a"),
    )
    assert r.status_code == 200, r.text
    r = await client.post(f"/v1/waitlist/offers/{offer['reference']}/accept", headers=world.auth("chc_a"))
    assert (r.status_code, r.json()["code"]) == (409, "offer_closed")

    # The loop follows the sandbox clock as every loop does, and passes the slot on.
    loop_clock = SandboxClock(wall=world.clock)
    assert await run_waitlist_pass(db, world.clock, crypto) == 0  # the wall clock: nothing expired
    loop_clock.adopt(await db.run(read_offset))
    assert await run_waitlist_pass(db, loop_clock, crypto) == 1
    [next_offer] = (await client.get("/v1/waitlist/offers", headers=world.auth("chc_a"))).json()["items"]
    assert next_offer["entry_reference"] != offer["entry_reference"]
