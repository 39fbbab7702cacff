"""Abuse limits: hotline verification attempts, per-client token buckets, busy retries, push bounds."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import select

from service.app import create_app
from service.kit.config import RateLimit, Settings
from service.models.audit import AuditEntry
from service.models.registry import ApiClient
from service.slots.schemas import MAX_PUSH_SESSIONS
from tests.factories import booked_referral, booking, contract_row, pool_slots, push, session_item, sign

DAY = date(2026, 3, 10)
HOTLINE = "/v1/hotline/cancellations"


@pytest.fixture
def settings() -> Settings:
    # A small per-client hotline limit, and a short lock wait for the busy answer.
    return Settings(
        run_loops=False, log_json=False, lock_timeout_ms=300, db_pool_size=20, hotline_client_max_failures=8
    )


@asynccontextmanager
async def http_app(settings: Settings, database_url: str, clock: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Another instance of the app on the same database: a second replica."""
    app = create_app(settings, database_url=database_url, clock=clock, run_loops=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://slotpool.test") as c:
            yield c


@pytest.fixture
async def referral(client, world) -> dict[str, Any]:
    return await booked_referral(client, world, DAY, [1, 2])


def wrong_code(referral: dict[str, Any], offset: int = 1) -> str:
    return f"{(int(referral['verification_code']) + offset) % 1_000_000:06d}"


async def hotline(client, world, reference: str, code: str) -> httpx.Response:
    body = {"reference": reference, "verification_code": code, "reason": "电话取消"}
    return await client.post(HOTLINE, json=body, headers=world.auth("hotline"))


async def status_of(client, world, referral) -> str:
    r = await client.get(f"/v1/referrals/{referral['reference']}", headers=world.auth("chc_a"))
    status: str = r.json()["status"]
    return status


# --- hotline verification attempts --------------------------------------------------------------


async def test_r12_five_failures_lock_the_reference_even_for_the_right_code(client, world, referral):
    for offset in range(1, 6):
        r = await hotline(client, world, referral["reference"], wrong_code(referral, offset))
        assert (r.status_code, r.json()["code"]) == (422, "verification_failed")
    r = await hotline(client, world, referral["reference"], referral["verification_code"])
    assert r.status_code == 429, r.text
    assert r.json()["code"] == "verification_locked"
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["Retry-After"] == str(15 * 60)
    assert await status_of(client, world, referral) == "booked"


async def test_r12_locked_reference_opens_again_after_fifteen_minutes(client, world, referral, clock):
    for offset in range(1, 6):
        await hotline(client, world, referral["reference"], wrong_code(referral, offset))
    clock.advance(timedelta(minutes=10))
    r = await hotline(client, world, referral["reference"], referral["verification_code"])
    assert (r.status_code, r.headers["Retry-After"]) == (429, str(5 * 60))
    clock.advance(timedelta(minutes=5))
    r = await hotline(client, world, referral["reference"], referral["verification_code"])
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"


async def test_four_failures_do_not_lock_the_reference(client, world, referral):
    for offset in range(1, 5):
        await hotline(client, world, referral["reference"], wrong_code(referral, offset))
    r = await hotline(client, world, referral["reference"], referral["verification_code"])
    assert r.status_code == 200, r.text


async def test_failures_older_than_the_window_are_forgotten(client, world, referral, clock):
    for offset in range(1, 5):
        await hotline(client, world, referral["reference"], wrong_code(referral, offset))
    clock.advance(timedelta(minutes=16))
    r = await hotline(client, world, referral["reference"], wrong_code(referral, 5))
    assert r.status_code == 422  # the first failure of a new window, not the fifth
    r = await hotline(client, world, referral["reference"], referral["verification_code"])
    assert r.status_code == 200, r.text


async def test_r12_unknown_reference_and_wrong_code_get_the_same_answer(client, world, referral):
    unknown = "R" + referral["reference"][1:][::-1]
    assert unknown != referral["reference"]
    wrong = await hotline(client, world, referral["reference"], wrong_code(referral))
    missing = await hotline(client, world, unknown, wrong_code(referral))

    def answer(r: httpx.Response) -> tuple[Any, ...]:
        body = r.json()
        return (r.status_code, r.headers["content-type"], sorted(body), body["code"], body["detail"])

    assert answer(wrong) == answer(missing)
    assert answer(wrong)[:4] == (
        422,
        "application/problem+json",
        sorted(["type", "title", "status", "code", "detail", "instance", "request_id"]),
        "verification_failed",
    )


async def test_unknown_reference_is_locked_like_a_known_one(client, world, referral):
    unknown = "ZZZZZZZZ"
    answers = [(await hotline(client, world, unknown, "000000")).status_code for _ in range(6)]
    assert answers == [422] * 5 + [429]


async def test_a_referral_of_another_region_answers_as_unknown(client, world, referral, crypto):
    from tests.factories import add_wuhu_key

    await add_wuhu_key(world, crypto, "wuhu_hotline", "hotline")
    body = {
        "reference": referral["reference"],
        "verification_code": referral["verification_code"],
        "reason": "电话取消",
    }
    r = await client.post(HOTLINE, json=body, headers=world.auth("wuhu_hotline"))
    assert (r.status_code, r.json()["code"]) == (422, "verification_failed")
    assert await status_of(client, world, referral) == "booked"


async def test_concurrent_guesses_are_counted_one_by_one(client, world, referral):
    answers = await asyncio.gather(
        *(hotline(client, world, referral["reference"], wrong_code(referral, n)) for n in range(1, 11))
    )
    assert Counter(r.status_code for r in answers) == {422: 5, 429: 5}


async def test_r12_a_hotline_client_is_locked_after_its_failures_across_references(
    client, world, referral, clock
):
    # settings: 8 failures per hour per hotline client; each reference stays under its own 5.
    for n in range(8):
        r = await hotline(client, world, f"GUESS{n:03d}", "123456")
        assert r.status_code == 422
    r = await hotline(client, world, referral["reference"], referral["verification_code"])
    assert r.status_code == 429, r.text
    assert r.json()["code"] == "verification_locked"
    assert "hotline client" in r.json()["detail"]
    assert r.headers["Retry-After"] == str(60 * 60)
    clock.advance(timedelta(hours=1))
    r = await hotline(client, world, referral["reference"], referral["verification_code"])
    assert r.status_code == 200, r.text


async def test_r12_every_hotline_failure_is_audited_without_the_code(client, world, referral, db):
    tried = [wrong_code(referral, n) for n in range(1, 6)]
    for code in tried:
        await hotline(client, world, referral["reference"], code)
    await hotline(client, world, "NOSUCHREF", "654321")
    await hotline(client, world, referral["reference"], referral["verification_code"])  # locked

    entries = await db.run(
        lambda s: s.scalars(
            select(AuditEntry).where(AuditEntry.action.like("hotline.%")).order_by(AuditEntry.id)
        )
    )
    entries = list(entries)
    hotline_client = await db.run(
        lambda s: s.scalar(select(ApiClient.id).where(ApiClient.organisation_id == world.ids["hotline"]))
    )
    assert [e.action for e in entries] == ["hotline.verification_failed"] * 6 + [
        "hotline.verification_locked"
    ]
    assert {e.actor_client_id for e in entries} == {hotline_client}
    assert [e.detail["reference"] for e in entries] == [referral["reference"]] * 5 + [
        "NOSUCHREF",
        referral["reference"],
    ]
    assert entries[4].detail["reference_locked_until"] is not None
    assert entries[5].referral_id is None and entries[0].referral_id is not None
    text = json.dumps([e.detail for e in entries])
    for code in [*tried, "654321", referral["verification_code"]]:
        assert code not in text


# --- per-client token buckets -------------------------------------------------------------------


def bucket_settings(settings: Settings, **kwargs: Any) -> Settings:
    return settings.model_copy(update={"rate_limit_burst": 3, "rate_limit_per_second": 0.5, **kwargs})


async def test_a_client_past_its_burst_gets_429_with_retry_after(world, settings, clean_db, clock):
    async with http_app(bucket_settings(settings), clean_db, clock) as http:
        answers = [(await http.get("/v1/pool/slots", headers=world.auth("chc_a"))) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "rate_limited"
    assert refused.headers["Retry-After"] == "2"  # one token at 0.5 per second
    assert refused.json()["retry_after"] == 2


async def test_fhir_says_when_to_retry_as_v1_does(world, settings, clean_db, clock):
    """/fhir answers an OperationOutcome, with the same Retry-After a /v1 refusal carries."""
    async with http_app(bucket_settings(settings), clean_db, clock) as http:
        answers = [(await http.get("/fhir/Location", headers=world.auth("chc_a"))) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert answers[-1].json()["resourceType"] == "OperationOutcome"
    assert answers[-1].headers["Retry-After"] == "2"


async def test_the_bucket_refills_on_the_clock(world, settings, clean_db, clock):
    async with http_app(bucket_settings(settings), clean_db, clock) as http:

        async def get() -> int:
            return (await http.get("/v1/pool/slots", headers=world.auth("chc_a"))).status_code

        assert [await get() for _ in range(4)] == [200, 200, 200, 429]
        clock.advance(timedelta(seconds=1))
        assert await get() == 429  # half a token
        clock.advance(timedelta(seconds=1))
        assert [await get(), await get()] == [200, 429]
        clock.advance(timedelta(hours=1))  # refills to the burst, no further
        assert [await get() for _ in range(4)] == [200, 200, 200, 429]


async def test_each_client_has_its_own_bucket(world, settings, clean_db, clock):
    async with http_app(bucket_settings(settings), clean_db, clock) as http:
        for _ in range(3):
            await http.get("/v1/pool/slots", headers=world.auth("chc_a"))
        assert (await http.get("/v1/pool/slots", headers=world.auth("chc_a"))).status_code == 429
        assert (await http.get("/v1/pool/slots", headers=world.auth("chc_b"))).status_code == 200


async def test_two_replicas_share_one_bucket(world, settings, clean_db, clock):
    limited = bucket_settings(settings, rate_limit_burst=4)
    async with http_app(limited, clean_db, clock) as one, http_app(limited, clean_db, clock) as two:
        codes = [
            (await replica.get("/v1/pool/slots", headers=world.auth("chc_a"))).status_code
            for replica in (one, two, one, two, one, two)
        ]
    assert codes == [200, 200, 200, 200, 429, 429]


async def test_a_role_can_have_its_own_bucket(world, settings, clean_db, clock):
    limited = bucket_settings(settings, rate_limit_by_role={"primary": RateLimit(burst=1, per_second=1)})
    async with http_app(limited, clean_db, clock) as http:
        primary = [(await http.get("/v1/pool/slots", headers=world.auth("chc_a"))).status_code for _ in "ab"]
        platform = [
            (await http.get("/v1/policies", headers=world.auth("platform"))).status_code for _ in "abc"
        ]
    assert primary == [200, 429]
    assert platform == [200, 200, 200]


async def test_concurrent_requests_never_spend_more_than_the_burst(world, settings, clean_db, clock):
    async with http_app(bucket_settings(settings, rate_limit_burst=5), clean_db, clock) as http:
        answers = await asyncio.gather(
            *(http.get("/v1/pool/slots", headers=world.auth("chc_a")) for _ in range(12))
        )
    assert Counter(r.status_code for r in answers) == {200: 5, 429: 7}


# --- busy -------------------------------------------------------------------------------------


async def test_busy_conflict_says_when_to_retry(client, world, clock, clean_db):
    await push(client, world, [session_item("S1", DAY, slots=10)])
    await sign(client, world, [1])
    slot = (await pool_slots(client, world))[0]
    holder = await asyncpg.connect(clean_db.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM slots WHERE id = $1 FOR UPDATE", slot["slot_id"])
            r = await client.post(
                "/v1/referrals", json=booking(slot["slot_id"], 1, clock=clock), headers=world.auth("chc_a")
            )
    finally:
        await holder.close()
    assert (r.status_code, r.json()["code"]) == (409, "busy"), r.text
    assert r.headers["Retry-After"] == "1"


# --- bulk bounds -----------------------------------------------------------------------------


async def test_a_push_of_more_than_500_sessions_is_refused(client, world):
    items = [session_item(f"S{n}", DAY, slots=1) for n in range(MAX_PUSH_SESSIONS + 1)]
    r = await client.post(
        "/v1/hospital/sessions", json={"sessions": items}, headers=world.auth("city_hospital")
    )
    assert r.status_code == 422, r.text
    body = r.json()
    assert (body["code"], body["item"], body["count"], body["limit"]) == (
        "too_many_items",
        "sessions",
        501,
        500,
    )


async def test_a_push_of_more_than_20000_slots_is_refused(client, world):
    items = [session_item(f"S{n}", DAY, slots=500, minutes=1) for n in range(41)]
    r = await client.post(
        "/v1/hospital/sessions", json={"sessions": items}, headers=world.auth("city_hospital")
    )
    assert r.status_code == 422, r.text
    assert (r.json()["code"], r.json()["item"], r.json()["count"]) == ("too_many_items", "slots", 20_500)


async def test_a_push_at_the_session_bound_is_accepted(client, world):
    items = [session_item(f"S{n}", DAY, slots=1) for n in range(MAX_PUSH_SESSIONS)]
    results = await push(client, world, items)
    assert len(results) == MAX_PUSH_SESSIONS


async def test_attendance_and_contract_sync_are_bounded(client, world):
    reports = [{"reference": f"R{n}", "outcome": "attended"} for n in range(501)]
    r = await client.post(
        "/v1/hospital/attendance", json={"reports": reports}, headers=world.auth("city_hospital")
    )
    assert (r.status_code, r.json()["code"], r.json()["limit"]) == (422, "too_many_items", 500)
    rows = [contract_row(1)] * 5001
    r = await client.post("/v1/contracts/sync", json={"contracts": rows}, headers=world.auth("platform"))
    assert (r.status_code, r.json()["code"], r.json()["limit"]) == (422, "too_many_items", 5000)
