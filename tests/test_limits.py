"""Booking limits stop scalping before it happens (R14); real parallel requests, the database decides."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import func, select

from service.kit.clock import SHANGHAI
from service.models.audit import AuditEntry
from service.models.referrals import Referral
from tests.factories import (
    TEST_POLICY,
    booking,
    contract_row,
    pool_slots,
    post_referral,
    push,
    session_item,
    sign,
)

DAY = date(2026, 3, 10)
NO_LIMITS = {
    "doctor_hourly_limit": None,
    "doctor_daily_limit": None,
    "institution_share_limit": None,
    "resident_active_limit": None,
}


def _json(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal | date) else value


async def limit_city_hospital(client, world, **limits: Any) -> dict[str, Any]:
    """The next version of the city hospital's policy, with these limits and no others."""
    body = {k: _json(v) for k, v in (TEST_POLICY | NO_LIMITS | limits).items()}
    r = await client.post("/v1/policies", json=body, headers=world.auth("commission"))
    assert r.status_code == 201, r.text
    published: dict[str, Any] = r.json()
    return published


async def open_departments(client, world, departments: list[str], *, slots: int = 50, who="city_hospital"):
    """One session per department on DAY, senior doctors, 5-minute slots; a fifth of them reserved."""
    items = [
        session_item(
            f"{who}-{d}", DAY, department=d, doctor_code=f"D-{d}", title="chief", slots=slots, minutes=5
        )
        for d in departments
    ]
    await push(client, world, items, who=who)


async def fire(live_server: str, world, attempts: list[tuple[str, dict[str, Any]]]) -> list[httpx.Response]:
    """Every attempt at once, each on its own connection to a real HTTP server."""
    limits = httpx.Limits(max_connections=len(attempts))
    async with httpx.AsyncClient(base_url=live_server, limits=limits, timeout=60) as http:
        return list(
            await asyncio.gather(
                *(
                    http.post("/v1/referrals", json=payload, headers=world.auth(who))
                    for who, payload in attempts
                )
            )
        )


def outcomes(responses: list[httpx.Response]) -> Counter[Any]:
    return Counter(
        r.status_code if r.status_code == 201 else (r.status_code, r.json()["code"]) for r in responses
    )


async def cancel(client, world, reference: str, who: str = "chc_a") -> None:
    r = await client.post(
        f"/v1/referrals/{reference}/cancel", json={"reason": "patient recovered"}, headers=world.auth(who)
    )
    assert r.status_code == 200, r.text


async def refusals(db, code: str) -> int:
    return int(
        await db.run(
            lambda s: s.scalar(
                select(func.count()).where(AuditEntry.action == "referral.refused", AuditEntry.code == code)
            )
        )
    )


# --- policy data --------------------------------------------------------------------


async def test_r14_limits_are_policy_data(client, world):
    published = await limit_city_hospital(
        client, world, doctor_hourly_limit=7, doctor_daily_limit=30, institution_share_limit="0.25"
    )
    assert (published["doctor_hourly_limit"], published["doctor_daily_limit"]) == (7, 30)
    assert Decimal(published["institution_share_limit"]) == Decimal("0.25")
    assert published["resident_active_limit"] is None
    r = await client.get("/v1/policies", headers=world.auth("chc_a"))
    fuzhou = next(p for p in r.json()["items"] if p["code"] == "fuzhou")
    assert (fuzhou["doctor_hourly_limit"], fuzhou["doctor_daily_limit"], fuzhou["resident_active_limit"]) == (
        20,
        60,
        5,
    )
    assert Decimal(fuzhou["institution_share_limit"]) == Decimal("0.5")


async def test_r14_a_version_published_without_limits_has_none(client, world):
    body = {k: _json(v) for k, v in TEST_POLICY.items()}
    r = await client.post("/v1/policies", json=body, headers=world.auth("commission"))
    assert r.status_code == 201, r.text
    assert all(r.json()[k] is None for k in NO_LIMITS)


async def test_r14_nonsensical_limits_are_refused(client, world):
    base = {k: _json(v) for k, v in TEST_POLICY.items()}
    for field, value in [
        ("institution_share_limit", "0"),
        ("institution_share_limit", "1.5"),
        ("doctor_hourly_limit", 0),
        ("resident_active_limit", -1),
    ]:
        r = await client.post("/v1/policies", json=base | {field: value}, headers=world.auth("commission"))
        assert r.status_code == 422, (field, value)
        assert r.json()["errors"][0]["loc"] == ["body", field]


# --- per family doctor ----------------------------------------------------------------


async def test_r14_doctor_hourly_limit_holds_under_parallel_requests(client, world, clock, db, live_server):
    await limit_city_hospital(client, world, doctor_hourly_limit=3)
    await open_departments(client, world, ["CARD"])
    slots = await pool_slots(client, world)
    assert len(slots) == 10
    await sign(client, world, list(range(1, 12)))  # 11 is kept out of the rush for the rebooking below

    responses = await fire(
        live_server,
        world,
        [("chc_a", booking(s["slot_id"], seq, clock=clock)) for seq, s in enumerate(slots, 1)],
    )

    assert outcomes(responses) == Counter({201: 3, (409, "doctor_hourly_limit"): 7})
    refused = next(r.json() for r in responses if r.status_code == 409)
    assert (refused["limit"], refused["current"]) == (3, 3)
    assert datetime.fromisoformat(refused["resets_at"]) == clock.now() + timedelta(hours=1)
    assert refused["retry_after"] == 3600
    assert await refusals(db, "doctor_hourly_limit") == 7

    # Bookings made count, whatever became of them: cancelling one frees nothing.
    booked = [r.json() for r in responses if r.status_code == 201]
    await cancel(client, world, booked[0]["reference"])
    free = await pool_slots(client, world)
    r = await post_referral(client, world, booking(free[0]["slot_id"], 11, clock=clock))
    assert (r.status_code, r.json()["code"]) == (409, "doctor_hourly_limit")

    # The window rolls: an hour after those bookings the doctor may book again.
    clock.advance(timedelta(hours=1))
    r = await post_referral(client, world, booking(free[0]["slot_id"], 11, clock=clock))
    assert r.status_code == 201, r.text


async def test_r14_doctor_hourly_limit_frees_as_each_booking_leaves_the_hour(client, world, clock):
    await limit_city_hospital(client, world, doctor_hourly_limit=2)
    await open_departments(client, world, ["CARD"])
    slots = await pool_slots(client, world)
    await sign(client, world, [1, 2, 3])
    first_at = clock.now()
    assert (
        await post_referral(client, world, booking(slots[0]["slot_id"], 1, clock=clock))
    ).status_code == 201
    clock.advance(timedelta(minutes=20))
    assert (
        await post_referral(client, world, booking(slots[1]["slot_id"], 2, clock=clock))
    ).status_code == 201
    clock.advance(timedelta(minutes=10))
    r = await post_referral(client, world, booking(slots[2]["slot_id"], 3, clock=clock))
    assert r.json()["code"] == "doctor_hourly_limit"
    assert datetime.fromisoformat(r.json()["resets_at"]) == first_at + timedelta(hours=1)
    assert r.json()["retry_after"] == 30 * 60
    clock.set(first_at + timedelta(hours=1))
    assert (
        await post_referral(client, world, booking(slots[2]["slot_id"], 3, clock=clock))
    ).status_code == 201


async def test_r14_doctor_daily_limit_holds_under_parallel_requests(client, world, clock, db, live_server):
    await limit_city_hospital(client, world, doctor_daily_limit=4)
    await open_departments(client, world, ["CARD"])
    slots = await pool_slots(client, world)
    await sign(client, world, list(range(1, 11)))
    # Two bookings earlier in the (Beijing) day, one of them since cancelled: both count.
    early = [
        await post_referral(client, world, booking(slots[i]["slot_id"], i + 1, clock=clock)) for i in (0, 1)
    ]
    assert [r.status_code for r in early] == [201, 201]
    await cancel(client, world, early[0].json()["reference"])
    clock.advance(timedelta(hours=11))  # 20:00 the same day

    free = await pool_slots(client, world)
    responses = await fire(
        live_server,
        world,
        [
            ("chc_a", booking(s["slot_id"], seq, clock=clock))
            for seq, s in zip(range(3, 11), free, strict=False)
        ],
    )

    assert outcomes(responses) == Counter({201: 2, (409, "doctor_daily_limit"): 6})
    refused = next(r.json() for r in responses if r.status_code == 409)
    midnight = datetime(2026, 3, 3, tzinfo=SHANGHAI)
    assert (refused["limit"], refused["current"]) == (4, 4)
    assert datetime.fromisoformat(refused["resets_at"]) == midnight
    assert refused["retry_after"] == (midnight - clock.now()).total_seconds()
    assert await refusals(db, "doctor_daily_limit") == 6

    clock.set(midnight + timedelta(minutes=30))  # the next day, the window still open
    last = (await pool_slots(client, world))[0]
    assert (await post_referral(client, world, booking(last["slot_id"], 1, clock=clock))).status_code == 201


async def test_r14_limits_follow_the_booked_slot_and_count_across_hospitals(client, world, clock):
    """The city hospital allows one booking an hour; the district hospital's preset allows 20."""
    await limit_city_hospital(client, world, doctor_hourly_limit=1, resident_active_limit=1)
    await open_departments(client, world, ["CARD"])
    await open_departments(client, world, ["CARD"], who="district_hospital")
    city = await pool_slots(client, world, hospital_id=world.ids["city_hospital"])
    district = await pool_slots(client, world, hospital_id=world.ids["district_hospital"])
    await sign(client, world, [1, 2, 3])

    r = await post_referral(client, world, booking(district[0]["slot_id"], 1, clock=clock))
    assert r.status_code == 201, r.text
    # At the city hospital the doctor's district booking already fills the hour.
    r = await post_referral(client, world, booking(city[0]["slot_id"], 2, clock=clock))
    assert (r.status_code, r.json()["code"]) == (409, "doctor_hourly_limit")
    # At the district hospital its own policy applies, counting the same bookings.
    r = await post_referral(client, world, booking(district[1]["slot_id"], 2, clock=clock))
    assert r.status_code == 201, r.text
    # A resident's active referrals at another hospital count against this one's limit.
    clock.advance(timedelta(hours=1))
    r = await post_referral(client, world, booking(city[0]["slot_id"], 1, clock=clock))
    assert (r.status_code, r.json()["code"]) == (409, "resident_active_limit")
    assert (r.json()["limit"], r.json()["current"]) == (1, 1)
    r = await post_referral(client, world, booking(city[0]["slot_id"], 3, clock=clock))
    assert r.status_code == 201, r.text


# --- per institution, per hospital, per day ------------------------------------------------


async def test_r14_institution_share_holds_under_parallel_requests(client, world, clock, db, live_server):
    """Three doctors of one institution race for a pool of 20 slots of which it may hold 30 %: 6."""
    await limit_city_hospital(client, world, institution_share_limit="0.30")
    await open_departments(client, world, ["CARD", "ENDO"])
    slots = await pool_slots(client, world)
    assert len(slots) == 20
    for doctor in ("FD-1", "FD-2", "FD-3"):
        seqs = [seq for seq in range(1, 13) if f"FD-{seq % 3 + 1}" == doctor]
        await sign(client, world, seqs, doctor_code=doctor)
    attempts = [
        ("chc_a", booking(slots[seq]["slot_id"], seq, clock=clock, doctor_code=f"FD-{seq % 3 + 1}"))
        for seq in range(1, 13)
    ]

    responses = await fire(live_server, world, attempts)

    assert outcomes(responses) == Counter({201: 6, (409, "institution_share_limit"): 6})
    refused = next(r.json() for r in responses if r.status_code == 409)
    assert (refused["limit"], refused["current"], refused["pool_slots"]) == (6, 6, 20)
    assert math.ceil(Decimal(refused["share"]) * 20) == 6
    assert await refusals(db, "institution_share_limit") == 6

    # Another institution has its own share of the same pool.
    await sign(client, world, [1], who="platform", institution="P-B", doctor_code="FD-9", region="340104")
    free = await pool_slots(client, world, who="chc_b")
    r = await post_referral(
        client,
        world,
        booking(free[0]["slot_id"], 1, clock=clock, doctor_code="FD-9", region="340104"),
        "chc_b",
    )
    assert r.status_code == 201, r.text
    # A cancelled referral is no longer active: it gives its place back.
    await cancel(client, world, next(r.json() for r in responses if r.status_code == 201)["reference"])
    free = await pool_slots(client, world)
    await sign(client, world, [13], doctor_code="FD-1")  # a resident who took no part in the race
    r = await post_referral(client, world, booking(free[0]["slot_id"], 13, clock=clock, doctor_code="FD-1"))
    assert r.status_code == 201, r.text


async def test_r14_institution_share_is_per_hospital_kind_and_day(client, world, clock):
    await limit_city_hospital(client, world, institution_share_limit="0.10")
    await open_departments(client, world, ["CARD"])  # 10 pool slots: the institution may hold 1
    later = DAY + timedelta(days=1)
    item = session_item("CARD-later", later, department="CARD", title="chief", slots=50, minutes=5,
                        public_at=datetime(2026, 3, 3, 8, tzinfo=SHANGHAI))  # fmt: skip
    await push(client, world, [item])
    slots = await pool_slots(client, world, service_date=DAY.isoformat())
    other_day = await pool_slots(client, world, service_date=later.isoformat())
    await sign(client, world, [1, 2, 3])
    assert (
        await post_referral(client, world, booking(slots[0]["slot_id"], 1, clock=clock))
    ).status_code == 201
    r = await post_referral(client, world, booking(slots[1]["slot_id"], 2, clock=clock))
    assert (r.status_code, r.json()["code"], r.json()["limit"]) == (409, "institution_share_limit", 1)
    assert (
        await post_referral(client, world, booking(other_day[0]["slot_id"], 2, clock=clock))
    ).status_code == 201


# --- per resident ---------------------------------------------------------------------------


async def test_r14_resident_active_limit_holds_under_parallel_requests(client, world, clock, db, live_server):
    """Two institutions book the same resident into six departments at once; two may stand."""
    await limit_city_hospital(client, world, resident_active_limit=2)
    departments = ["CARD", "ENDO", "NEUR", "RESP", "GERI", "NEPH"]
    await open_departments(client, world, departments, slots=10)
    slots = await pool_slots(client, world)
    by_department = {s["department"]["code"]: s for s in slots}
    await sign(client, world, [1])
    r = await client.post(
        "/v1/contracts/sync",
        json={"contracts": [contract_row(1, institution="P-B", doctor_code="FD-9")]},
        headers=world.auth("platform"),
    )
    assert r.json()["rejected"] == 0, r.text
    attempts = [
        (who, booking(by_department[d]["slot_id"], 1, clock=clock, doctor_code=doctor))
        for d, (who, doctor) in zip(departments, [("chc_a", "FD-1"), ("chc_b", "FD-9")] * 3, strict=True)
    ]

    responses = await fire(live_server, world, attempts)

    assert outcomes(responses) == Counter({201: 2, (409, "resident_active_limit"): 4})
    assert await refusals(db, "resident_active_limit") == 4
    active = await db.run(
        lambda s: s.scalar(select(func.count()).select_from(Referral).where(Referral.status == "booked"))
    )
    assert active == 2

    # A cancelled referral is no longer active: it gives its place back.
    first, second = [r.json() for r in responses if r.status_code == 201]
    who = "chc_a" if first["referring_institution"]["code"] == "P-A" else "chc_b"
    await cancel(client, world, first["reference"], who=who)
    free = {s["department"]["code"]: s for s in await pool_slots(client, world)}
    free.pop(second["department"]["code"])
    one, two = list(free.values())[:2]
    assert (await post_referral(client, world, booking(one["slot_id"], 1, clock=clock))).status_code == 201
    r = await post_referral(client, world, booking(two["slot_id"], 1, clock=clock))
    assert r.json()["code"] == "resident_active_limit"


# --- all of them at once ----------------------------------------------------------------------


async def test_r14_crossing_limits_never_deadlock_or_overshoot(client, world, clock, db, live_server):
    """Two institutions, four doctors, six residents, every limit on: locks cross, none deadlocks."""
    await limit_city_hospital(
        client,
        world,
        doctor_hourly_limit=4,
        doctor_daily_limit=4,
        institution_share_limit="0.40",
        resident_active_limit=2,
    )
    departments = ["CARD", "ENDO", "NEUR", "RESP"]
    await open_departments(client, world, departments, slots=25)  # 5 pool slots each, 20 in all
    slots = await pool_slots(client, world)
    assert len(slots) == 20
    doctors = [
        ("chc_a", "P-A", "FD-1"),
        ("chc_a", "P-A", "FD-2"),
        ("chc_b", "P-B", "FD-8"),
        ("chc_b", "P-B", "FD-9"),
    ]
    # Every resident is signed with every doctor, so any doctor may book any resident.
    contracts = [
        contract_row(seq, institution=inst, doctor_code=doc) | {"contract_no": f"C-{doc}-{seq}"}
        for _, inst, doc in doctors
        for seq in range(1, 7)
    ]
    r = await client.post("/v1/contracts/sync", json={"contracts": contracts}, headers=world.auth("platform"))
    assert r.json()["rejected"] == 0, r.text
    # Attempt i: doctor i mod 4 books resident i mod 6, so each resident meets doctors of both institutions.
    attempts = [
        (doctors[i % 4][0], booking(slot["slot_id"], i % 6 + 1, clock=clock, doctor_code=doctors[i % 4][2]))
        for i, slot in enumerate(slots)
    ]

    responses = await fire(live_server, world, attempts)

    codes = outcomes(responses)
    assert set(codes) <= {
        201,
        (409, "doctor_hourly_limit"),
        (409, "doctor_daily_limit"),
        (409, "institution_share_limit"),
        (409, "resident_active_limit"),
        (409, "duplicate_referral"),
    }, codes
    assert codes[201] > 0
    rows = (
        await db.run(
            lambda s: s.execute(
                select(Referral.referring_doctor_id, Referral.booker_org_id, Referral.resident_id).where(
                    Referral.status == "booked"
                )
            )
        )
    ).all()
    assert len(rows) == codes[201]
    assert max(Counter(doctor for doctor, _, _ in rows).values()) <= 4
    assert max(Counter(org for _, org, _ in rows).values()) <= math.ceil(Decimal("0.40") * 20)
    assert max(Counter(resident for _, _, resident in rows).values()) <= 2
