"""The sandbox: a clock integrators move through the API, followed by every process and loop.

The wall clock underneath is the test's ManualClock, which these tests never move: every
second that passes here passes through ``POST /v1/sandbox/clock``, as for an integrator.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import select

from service.app import create_app
from service.kit.clock import SandboxClock, local_date, local_datetime
from service.kit.config import Settings
from service.models.audit import AuditEntry
from service.models.events import Event
from service.models.sandbox import SandboxClock as ClockRow
from service.sandbox.service import SandboxRefused, claim_sandbox, follow_clock, read_offset
from service.slots.release import release_due_slots
from tests.conftest import START
from tests.factories import booking, pool_slots, session_item, sign, to_local
from tests.test_contracts import INSTANT


@pytest.fixture
def settings() -> Settings:
    return Settings(
        run_loops=False,
        log_json=False,
        lock_timeout_ms=5000,
        db_pool_size=20,
        webhook_allow_loopback=True,
        sandbox=True,
    )


def sandbox_clock(app: Any) -> SandboxClock:
    clock = app.state.slotpool.clock
    assert isinstance(clock, SandboxClock)
    return clock


async def move(client, world, who="city_hospital", **body: Any) -> httpx.Response:
    return await client.post("/v1/sandbox/clock", json=body, headers=world.auth(who))


async def moved(client, world, who="city_hospital", **body: Any) -> dict[str, Any]:
    r = await move(client, world, who, **body)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


# --- moving the clock ------------------------------------------------------------------------------


async def test_the_clock_advances_by_a_duration_and_to_an_instant(client, world, db):
    body = await moved(client, world, advance="PT25H")
    assert to_local(body["now"]) == START + timedelta(hours=25)
    assert body["offset_seconds"] == 25 * 3600
    assert body["local_date"] == "2026-03-03"
    assert to_local(body["wall_now"]) == START  # the wall clock did not move

    later = local_datetime(START.date() + timedelta(days=10), 7, 30)
    body = await moved(client, world, who="chc_a", now=later.isoformat())
    assert to_local(body["now"]) == later

    r = await client.get("/v1/sandbox/clock", headers=world.auth("platform"))
    assert r.status_code == 200 and to_local(r.json()["now"]) == later
    # A move given with +08:00 is answered, like every instant, in UTC with Z.
    for answer in (body, r.json()):
        for field in ("now", "wall_now", "moved_at"):
            assert INSTANT.fullmatch(answer[field]), (field, answer[field])
    assert await db.run(read_offset) == later - START

    # Every move is audited, with the client that made it.
    entries = await db.run(
        lambda s: s.scalars(select(AuditEntry).where(AuditEntry.action == "sandbox.clock_moved"))
    )
    first, second = sorted(entries, key=lambda e: e.id)
    assert first.actor_client_id is not None and first.actor_org_id == world.ids["city_hospital"]
    assert second.actor_org_id == world.ids["chc_a"]
    assert second.detail["offset_seconds"] == (later - START).total_seconds()
    assert first.detail["advanced_seconds"] == 25 * 3600


async def test_the_clock_never_goes_back(client, world, db):
    await moved(client, world, advance="P2D")
    for body in ({"now": START.isoformat()}, {"advance": "-PT1S"}):
        r = await move(client, world, **body)
        assert r.status_code == 409, r.text
        assert r.json()["code"] == "clock_backwards"
        assert to_local(r.json()["now"]) == START + timedelta(days=2)
    assert await db.run(read_offset) == timedelta(days=2)
    # Standing still is no move back.
    assert to_local((await moved(client, world, advance="PT0S"))["now"]) == START + timedelta(days=2)
    # An older reading of the offset never moves a process's clock back either.
    clock = SandboxClock()
    clock.adopt(timedelta(days=2))
    clock.adopt(timedelta(days=1))
    assert clock.offset == timedelta(days=2)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 422, "invalid_request"),
        ({"now": "2026-03-05T09:00:00+08:00", "advance": "PT1H"}, 422, "invalid_request"),
        ({"now": "2026-03-05T09:00:00"}, 422, "invalid_request"),  # no offset
        ({"advance": "soon"}, 422, "invalid_request"),
        ({"advance": "P4000D"}, 422, "date_out_of_range"),
        ({"advance": "P999999999D"}, 422, "date_out_of_range"),  # past the year 9999: no overflow
    ],
)
async def test_a_bad_move_is_refused_and_moves_nothing(client, world, db, body, status, code):
    r = await move(client, world, **body)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert await db.run(read_offset) == timedelta(0)


# --- one time for every worker and loop ------------------------------------------------------------


async def test_every_worker_sees_the_move_at_its_next_request(app, client, world, settings, clean_db):
    """Two processes of one sandbox (two apps, each its own clock, one database)."""
    other = create_app(settings, database_url=clean_db, clock=world.clock, run_loops=False)
    async with other.router.lifespan_context(other):
        transport = httpx.ASGITransport(app=other)
        async with httpx.AsyncClient(transport=transport, base_url="http://other.test") as second:
            await moved(client, world, advance="PT30H")
            assert sandbox_clock(other).now() == START  # nothing asked it yet
            r = await second.get("/v1/me", headers=world.auth("chc_a"))
            assert r.status_code == 200
            assert sandbox_clock(other).now() == START + timedelta(hours=30)


async def test_a_loop_follower_takes_the_move_within_its_interval(client, world, db):
    follower = SandboxClock(wall=world.clock)
    stop = asyncio.Event()
    task = asyncio.create_task(follow_clock(db, follower, interval=0.05, stop=stop))
    try:
        await moved(client, world, advance="PT3H")
        deadline = asyncio.get_running_loop().time() + 10
        while follower.now() != START + timedelta(hours=3):
            assert asyncio.get_running_loop().time() < deadline, "the follower never took the move"
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task


# --- the walk of an integrator ---------------------------------------------------------------------


async def test_r5_r6_r13_an_integrator_walks_windows_release_and_no_shows_to_a_bar(app, client, world, db):
    """Push, advance to the pool window, book, advance past the session, report the no-show: the
    policy's rule (3 no-shows in 180 days) bars the resident at the third. Only the sandbox
    clock moves; the whole walk takes seconds."""
    await sign(client, world, [1, 2])
    references = []
    for round_ in range(3):
        now = to_local(
            (await client.get("/v1/sandbox/clock", headers=world.auth("city_hospital"))).json()["now"]
        )
        day = local_date(now) + timedelta(days=10)
        r = await client.post(
            "/v1/hospital/sessions",
            json={"sessions": [session_item(f"WALK-{round_}", day, slots=10)]},
            headers=world.auth("city_hospital"),
        )
        assert r.status_code == 200, r.text
        [result] = r.json()["results"]
        opens = to_local(result["pool_opens_at"])
        assert opens > now
        assert await pool_slots(client, world, service_date=day.isoformat()) == []  # R5: not yet open

        await moved(client, world, now=(opens + timedelta(minutes=1)).isoformat())
        [slot, *_] = await pool_slots(client, world, service_date=day.isoformat())
        sandbox_now = opens + timedelta(minutes=1)
        r = await client.post(
            "/v1/referrals",
            json=booking(
                slot["slot_id"], 1, clock=world.clock, encountered_at=sandbox_now - timedelta(hours=1)
            ),
            headers=world.auth("chc_a"),
        )
        assert r.status_code == 201, r.text
        referral = r.json()
        references.append(referral["reference"])

        # The release (R6) follows the sandbox clock too: past public_at, the rest goes back.
        await moved(client, world, now=(to_local(result["public_at"]) + timedelta(seconds=1)).isoformat())
        loop_clock = SandboxClock(wall=world.clock)
        loop_clock.adopt(await db.run(read_offset))  # what each process's follower does
        assert await release_due_slots(db, loop_clock) > 0

        await moved(
            client, world, now=(to_local(referral["slot"]["ends_at"]) + timedelta(hours=2)).isoformat()
        )
        r = await client.post(
            "/v1/hospital/attendance",
            json={"reports": [{"reference": referral["reference"], "outcome": "no_show"}]},
            headers=world.auth("city_hospital"),
        )
        assert r.status_code == 200, r.text
        [outcome] = r.json()["results"]
        assert outcome["result"] == "recorded"
        if round_ < 2:
            assert outcome["bar"] is None
    bar = outcome["bar"]
    today = local_date(sandbox_clock(app).now())
    assert (bar["effect"], bar["starts_on"]) == ("started", today.isoformat())
    assert bar["ends_on"] == (today + timedelta(days=89)).isoformat()

    # The bar is in force in the sandbox's today, so the next booking is refused.
    day = today + timedelta(days=10)
    item = session_item("WALK-3", day, slots=10)
    r = await client.post(
        "/v1/hospital/sessions", json={"sessions": [item]}, headers=world.auth("city_hospital")
    )
    opens = to_local(r.json()["results"][0]["pool_opens_at"])
    await moved(client, world, now=(opens + timedelta(minutes=1)).isoformat())
    [slot, *_] = await pool_slots(client, world, service_date=day.isoformat())
    r = await client.post(
        "/v1/referrals",
        json=booking(slot["slot_id"], 1, clock=world.clock, encountered_at=opens - timedelta(minutes=59)),
        headers=world.auth("chc_a"),
    )
    assert (r.status_code, r.json()["code"]) == (403, "resident_barred")

    # Events carry the sandbox's time, not the wall's.
    latest = await db.run(lambda s: s.scalar(select(Event.created_at).order_by(Event.id.desc()).limit(1)))
    assert latest > START + timedelta(days=29)


# --- refused outside a sandbox ----------------------------------------------------------------------


async def test_outside_a_sandbox_the_clock_does_not_exist(clean_db, world, db):
    plain = Settings(run_loops=False, log_json=False)
    app = create_app(plain, database_url=clean_db, clock=world.clock, run_loops=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://plain.test") as client:
            for headers in (world.auth("commission"), {}):
                r = await client.post("/v1/sandbox/clock", json={"advance": "PT1H"}, headers=headers)
                assert (r.status_code, r.json()["code"]) == (404, "sandbox_off")
                r = await client.get("/v1/sandbox/clock", headers=headers)
                assert (r.status_code, r.json()["code"]) == (404, "sandbox_off")
    assert await db.run(lambda s: s.scalar(select(ClockRow.id))) is None


def test_production_refuses_the_sandbox_setting():
    key = "YW4tb3BlcmF0b3Ita2V5LW9mLTMyLWJ5dGVzLTAwMDE="  # base64 of 32 bytes, not a development key
    with pytest.raises(ValidationError, match="SLOTPOOL_SANDBOX"):
        Settings(
            env="production",
            database_url="postgresql://u@db.invalid/x",
            data_key=key,
            index_key=key,
            api_key_pepper=key,
            sandbox=True,
        )


async def test_a_new_database_becomes_a_sandbox_and_stays_one(db):
    assert await db.run(lambda s: claim_sandbox(s, now=START)) is True
    assert await db.run(lambda s: claim_sandbox(s, now=START)) is False  # a sandbox already
    assert await db.run(read_offset) == timedelta(0)


async def test_a_database_that_served_on_the_wall_clock_is_refused_as_a_sandbox(world, db):
    with pytest.raises(SandboxRefused, match="wall clock"):
        await db.run(lambda s: claim_sandbox(s, now=START))
    assert await db.run(lambda s: s.scalar(select(ClockRow.id))) is None
