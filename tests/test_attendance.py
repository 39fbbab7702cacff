"""Attendance reports, the no-show rule (R13), the worklist, receipts and the hospital's listing."""

from __future__ import annotations

import asyncio
import json
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select

from service.attendance.schemas import AttendanceReport
from service.attendance.service import report_attendance
from service.kit.clock import local_datetime
from service.kit.context import Actor
from service.models.attendance import NoShowBar
from service.models.audit import AuditEntry
from service.models.events import Event
from tests.factories import (
    TEST_POLICY,
    booking,
    pool_slots,
    push,
    session_item,
    sign,
    synthetic_id,
    to_local,
    until_a_session_waits_on_a_lock,
)
from tests.test_contracts import _validator

D1 = date(2026, 3, 10)
D2 = date(2026, 3, 12)


async def set_city_rule(client, world, *, max_no_shows=2, window_days=30, bar_days=10):
    """The city hospital's policy, as a new version with its own no-show rule."""
    body = {k: str(v) if isinstance(v, Decimal | date) else v for k, v in TEST_POLICY.items()}
    body["no_show_rule"] = {
        "max_no_shows": max_no_shows,
        "window_days": window_days,
        "bar_days": bar_days,
        "text": f"{window_days}天内爽约{max_no_shows}次，{bar_days}天内不能预约。",
    }
    r = await client.post("/v1/policies", json=body, headers=world.auth("commission"))
    assert r.status_code == 201, r.text


async def try_book(client, world, day, seq, *, hospital="city_hospital", department="CARD"):
    """Book ``day`` for resident ``seq`` from inside its pool window (clock: 8 days before, 09:00)."""
    world.clock.set(local_datetime(day - timedelta(days=8), 9))
    item = session_item(
        f"{hospital}-{department}-{day}", day, slots=20, department=department, doctor_code=f"D-{department}"
    )
    await push(client, world, [item], who=hospital)
    slots = [
        s
        for s in await pool_slots(
            client, world, hospital_id=world.ids[hospital], service_date=day.isoformat()
        )
        if s["department"]["code"] == department
    ]
    assert slots, "no free pool slot left"
    payload = booking(slots[0]["slot_id"], seq, clock=world.clock)
    return await client.post("/v1/referrals", json=payload, headers=world.auth("chc_a"))


async def refer(client, world, day, seq, **kwargs) -> dict[str, Any]:
    r = await try_book(client, world, day, seq, **kwargs)
    assert r.status_code == 201, r.text
    return r.json()


def after_slot(world, referral, hours=2):
    world.clock.set(to_local(referral["slot"]["ends_at"]) + timedelta(hours=hours))


async def report(client, world, *items, who="city_hospital"):
    reports = [{"reference": ref, "outcome": outcome} for ref, outcome in items]
    r = await client.post("/v1/hospital/attendance", json={"reports": reports}, headers=world.auth(who))
    assert r.status_code == 200, r.text
    return r.json()


async def audit(db, action):
    return list(
        await db.run(
            lambda s: s.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id))
        )
    )


async def bar_count(db):
    return await db.run(lambda s: s.scalar(select(func.count()).select_from(NoShowBar)))


@pytest.fixture
async def signed(client, world):
    await sign(client, world, [1, 2, 3, 4, 5, 6, 7, 8, 9])


# --- the no-show rule (R13) -----------------------------------------------------------------


async def test_r13_reaching_the_threshold_bars_the_resident_with_an_end_date(client, world, signed, db):
    await set_city_rule(client, world)  # 2 no-shows in 30 days bar for 10 days
    first = await refer(client, world, D1, 1)
    second = await refer(client, world, D2, 1)
    after_slot(world, second)  # 12 March
    body = await report(client, world, (first["reference"], "no_show"), (second["reference"], "no_show"))
    assert (body["results"][0]["result"], body["results"][0]["bar"]) == ("recorded", None)
    bar = body["results"][1]["bar"]
    assert (bar["effect"], bar["starts_on"], bar["ends_on"]) == ("started", "2026-03-12", "2026-03-21")

    r = await try_book(client, world, date(2026, 3, 21), 1)  # booking on 13 March
    assert r.status_code == 403
    problem = r.json()
    assert problem["code"] == "resident_barred"
    assert problem["bar_ends_on"] == "2026-03-21"
    assert "2026-03-21" in problem["detail"]
    [refusal] = await audit(db, "referral.refused")
    assert (refusal.code, refusal.actor_org_id) == ("resident_barred", world.ids["chc_a"])
    [started] = await audit(db, "no_show_bar.started")
    assert started.detail["ends_on"] == "2026-03-21"
    assert started.hospital_id == world.ids["city_hospital"]
    assert len(await audit(db, "attendance.recorded")) == 2
    # Another resident of the same family doctor is not affected.
    assert (await try_book(client, world, date(2026, 3, 21), 2)).status_code == 201


async def test_r13_below_the_threshold_there_is_no_bar(client, world, signed, db):
    await set_city_rule(client, world)
    first = await refer(client, world, D1, 1)
    second = await refer(client, world, D2, 1)
    after_slot(world, second)
    body = await report(client, world, (first["reference"], "no_show"), (second["reference"], "attended"))
    assert [r["bar"] for r in body["results"]] == [None, None]
    assert await bar_count(db) == 0
    assert (await try_book(client, world, date(2026, 3, 21), 1)).status_code == 201


async def test_r13_no_shows_outside_the_window_do_not_count(client, world, signed):
    await set_city_rule(client, world)  # window: 30 days
    old = await refer(client, world, D1, 1)
    after_slot(world, old)
    await report(client, world, (old["reference"], "no_show"))
    later = await refer(client, world, date(2026, 4, 15), 1)  # 36 days after the first
    after_slot(world, later)
    [result] = (await report(client, world, (later["reference"], "no_show")))["results"]
    assert result["bar"] is None
    # A second no-show inside the 30 days does reach the threshold.
    third = await refer(client, world, date(2026, 4, 20), 1)
    after_slot(world, third)
    [result] = (await report(client, world, (third["reference"], "no_show")))["results"]
    assert result["bar"]["effect"] == "started"


async def test_r13_bar_expires_after_bar_days(client, world, signed):
    await set_city_rule(client, world)  # bar from 12 March for 10 days: through 21 March
    first = await refer(client, world, D1, 1)
    second = await refer(client, world, D2, 1)
    after_slot(world, second)
    await report(client, world, (first["reference"], "no_show"), (second["reference"], "no_show"))
    r = await try_book(client, world, date(2026, 3, 29), 1)  # booking on 21 March, the last day
    assert r.status_code == 403
    assert r.json()["bar_ends_on"] == "2026-03-21"
    r = await try_book(client, world, date(2026, 3, 30), 1)  # booking on 22 March
    assert r.status_code == 201, r.text


async def test_r13_rule_is_per_hospital(client, world, signed, db):
    """City hospital: 2 in 30 days bar 10 days. District hospital (fuzhou): 3 in 180 days bar 90 days."""
    await set_city_rule(client, world)
    D3 = date(2026, 3, 14)
    refs: dict[tuple[str, date], dict[str, Any]] = {}
    for day in (D1, D2, D3):
        for hospital in ("city_hospital", "district_hospital"):
            if (hospital, day) != ("city_hospital", D3):
                refs[hospital, day] = await refer(client, world, day, 1, hospital=hospital)
    after_slot(world, refs["district_hospital", D2])  # 12 March
    for hospital in ("city_hospital", "district_hospital"):
        await report(
            client,
            world,
            (refs[hospital, D1]["reference"], "no_show"),
            (refs[hospital, D2]["reference"], "no_show"),
            who=hospital,
        )
    # Two no-shows bar the city hospital only; the district hospital's rule needs three.
    assert (await try_book(client, world, date(2026, 3, 21), 1)).json()["code"] == "resident_barred"
    r = await try_book(client, world, date(2026, 3, 21), 1, hospital="district_hospital")
    assert r.status_code == 201, r.text
    after_slot(world, refs["district_hospital", D3])  # 14 March
    [result] = (
        await report(
            client, world, (refs["district_hospital", D3]["reference"], "no_show"), who="district_hospital"
        )
    )["results"]
    assert (result["bar"]["starts_on"], result["bar"]["ends_on"]) == ("2026-03-14", "2026-06-11")  # 90 days
    bars = list(await db.run(lambda s: s.scalars(select(NoShowBar).order_by(NoShowBar.id))))
    assert [b.hospital_id for b in bars] == [world.ids["city_hospital"], world.ids["district_hospital"]]
    assert [len(b.trigger_referral_ids) for b in bars] == [2, 3]


async def test_r13_commission_lifts_a_bar_with_a_recorded_reason(client, world, signed, db):
    await set_city_rule(client, world)
    first = await refer(client, world, D1, 1)
    second = await refer(client, world, D2, 1)
    after_slot(world, second)
    await report(client, world, (first["reference"], "no_show"), (second["reference"], "no_show"))

    r = await client.get("/v1/no-show-bars", params={"active": "true"}, headers=world.auth("commission"))
    assert r.status_code == 200, r.text
    [bar] = r.json()["items"]
    assert bar["resident_name_masked"] == "张*"
    assert bar["resident_id_masked"].count("*") == 16
    assert bar["no_show_references"] == [first["reference"], second["reference"]]
    assert (bar["active"], bar["ends_on"], bar["policy"]) == (True, "2026-03-21", "test-city v2")

    r = await client.post(
        f"/v1/no-show-bars/{bar['id']}/lift", json={"reason": "x"}, headers=world.auth("city_hospital")
    )
    assert r.status_code == 403
    r = await client.post(
        f"/v1/no-show-bars/{bar['id']}/lift",
        json={"reason": "患者住院，经核实非恶意爽约"},
        headers=world.auth("commission"),
    )
    assert r.status_code == 200, r.text
    lifted = r.json()
    assert (lifted["active"], lifted["lift_kind"], lifted["lift_reason"]) == (
        False,
        "commission",
        "患者住院，经核实非恶意爽约",
    )
    [entry] = await audit(db, "no_show_bar.lifted")
    assert (entry.reason, entry.code, entry.actor_org_id) == (
        "患者住院，经核实非恶意爽约",
        "commission",
        world.ids["commission"],
    )
    r = await client.post(
        f"/v1/no-show-bars/{bar['id']}/lift", json={"reason": "again"}, headers=world.auth("commission")
    )
    assert r.json()["code"] == "bar_already_lifted"
    r = await client.post(
        "/v1/no-show-bars/999999/lift", json={"reason": "x"}, headers=world.auth("commission")
    )
    assert r.json()["code"] == "bar_not_found"
    assert (
        await client.get("/v1/no-show-bars", params={"active": "true"}, headers=world.auth("commission"))
    ).json()["items"] == []

    third = await refer(client, world, date(2026, 3, 21), 1)  # booking on 13 March: lifted, so allowed
    after_slot(world, third)
    # The lifted bar's no-shows are spent: one more no-show does not bar again.
    [result] = (await report(client, world, (third["reference"], "no_show")))["results"]
    assert result["bar"] is None


async def test_r13_commission_lists_bars_of_its_region_page_by_page(client, world, signed):
    await set_city_rule(client, world)
    refs = [await refer(client, world, day, seq) for day in (D1, D2) for seq in (1, 2, 3)]
    after_slot(world, refs[-1])
    await report(client, world, *[(r["reference"], "no_show") for r in refs])
    seen, cursor = [], None
    while True:
        params = {"limit": 2, "hospital_id": world.ids["city_hospital"]} | (
            {"cursor": cursor} if cursor else {}
        )
        page = (await client.get("/v1/no-show-bars", params=params, headers=world.auth("commission"))).json()
        seen += [b["id"] for b in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 3
    assert seen == sorted(set(seen), reverse=True)
    r = await client.get(
        "/v1/no-show-bars",
        params={"hospital_id": world.ids["district_hospital"]},
        headers=world.auth("commission"),
    )
    assert r.json()["items"] == []


async def test_r13_correction_to_attended_lifts_the_bar(client, world, signed, db):
    await set_city_rule(client, world)
    first = await refer(client, world, D1, 1)
    second = await refer(client, world, D2, 1)
    after_slot(world, second)
    await report(client, world, (first["reference"], "no_show"), (second["reference"], "no_show"))
    world.clock.advance(timedelta(days=1))
    [result] = (await report(client, world, (first["reference"], "attended")))["results"]
    assert (result["result"], result["outcome"], result["bar"]["effect"]) == (
        "corrected",
        "attended",
        "lifted",
    )
    assert (await try_book(client, world, date(2026, 3, 21), 1)).status_code == 201
    [corrected] = await audit(db, "attendance.corrected")
    assert corrected.detail == {"reference": first["reference"], "outcome": "attended", "previous": "no_show"}
    [lifted] = await audit(db, "no_show_bar.lifted")
    assert lifted.code == "correction"
    assert first["reference"] in lifted.reason
    [bar] = (await client.get("/v1/no-show-bars", headers=world.auth("commission"))).json()["items"]
    assert (bar["active"], bar["lift_kind"]) == (False, "correction")


async def test_r13_correction_keeps_a_bar_that_still_reaches_the_threshold(client, world, signed, db):
    await set_city_rule(client, world)
    refs = [await refer(client, world, day, 1) for day in (D1, D2, date(2026, 3, 14))]
    after_slot(world, refs[-1])
    body = await report(client, world, *[(r["reference"], "no_show") for r in refs])
    assert [r["bar"] and r["bar"]["effect"] for r in body["results"]] == [None, "started", None]
    [result] = (await report(client, world, (refs[0]["reference"], "attended")))["results"]
    assert result["bar"]["effect"] == "kept"
    [bar] = (await client.get("/v1/no-show-bars", headers=world.auth("commission"))).json()["items"]
    assert bar["active"] is True
    assert bar["no_show_references"] == [refs[1]["reference"], refs[2]["reference"]]


# --- reports: idempotency and refusals ---------------------------------------------------------


async def test_r13_same_batch_twice_is_unchanged_and_writes_nothing(client, world, signed, db):
    refs = [await refer(client, world, D1, seq) for seq in (1, 2, 3)]
    after_slot(world, refs[-1])
    batch = [
        (refs[0]["reference"], "attended"),
        (refs[1]["reference"], "no_show"),
        (refs[2]["reference"], "attended"),
    ]
    first = await report(client, world, *batch)
    assert (first["recorded"], first["unchanged"]) == (3, 0)
    before = await db.run(lambda s: s.scalar(select(func.count()).select_from(AuditEntry)))
    world.clock.advance(timedelta(hours=1))
    again = await report(client, world, *batch)
    assert (again["recorded"], again["corrected"], again["unchanged"], again["refused"]) == (0, 0, 3, 0)
    assert [r["outcome"] for r in again["results"]] == ["attended", "no_show", "attended"]
    assert await db.run(lambda s: s.scalar(select(func.count()).select_from(AuditEntry))) == before
    r = await client.get(f"/v1/referrals/{refs[1]['reference']}", headers=world.auth("city_hospital"))
    assert to_local(r.json()["attendance"]["reported_at"]) == to_local(
        refs[-1]["slot"]["ends_at"]
    ) + timedelta(hours=2)


async def test_r13_refusals_are_per_item(client, world, signed, db):
    ok = await refer(client, world, D1, 1)
    cancelled = await refer(client, world, D1, 2)
    elsewhere = await refer(client, world, D1, 3, hospital="district_hospital")
    future = await refer(client, world, D2, 4)
    r = await client.post(
        f"/v1/referrals/{cancelled['reference']}/cancel", json={"reason": "改期"}, headers=world.auth("chc_a")
    )
    assert r.status_code == 200
    world.clock.set(to_local(ok["slot"]["starts_at"]))  # the slot has just started
    body = await report(
        client,
        world,
        (ok["reference"], "attended"),
        ("RNOSUCHREF", "no_show"),
        (elsewhere["reference"], "no_show"),
        (cancelled["reference"], "no_show"),
        (future["reference"], "no_show"),
    )
    assert [(r["result"], r["code"]) for r in body["results"]] == [
        ("recorded", None),
        ("refused", "referral_not_found"),
        ("refused", "referral_not_found"),
        ("refused", "referral_cancelled"),
        ("refused", "too_early"),
    ]
    assert (body["recorded"], body["refused"]) == (1, 4)
    r = await client.get(f"/v1/referrals/{elsewhere['reference']}", headers=world.auth("district_hospital"))
    assert r.json()["attendance"] is None
    assert [e.referral_id is not None for e in await audit(db, "attendance.recorded")] == [True]


async def test_r13_a_schema_error_refuses_the_whole_batch(client, world, signed):
    ok = await refer(client, world, D1, 1)
    after_slot(world, ok)
    reports = [{"reference": ok["reference"], "outcome": "attended"}, {"reference": "X", "outcome": "late"}]
    r = await client.post(
        "/v1/hospital/attendance", json={"reports": reports}, headers=world.auth("city_hospital")
    )
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_request"
    too_many = [{"reference": ok["reference"], "outcome": "attended"}] * 501
    r = await client.post(
        "/v1/hospital/attendance", json={"reports": too_many}, headers=world.auth("city_hospital")
    )
    assert r.status_code == 422
    r = await client.get(f"/v1/referrals/{ok['reference']}", headers=world.auth("city_hospital"))
    assert r.json()["attendance"] is None
    r = await client.post(
        "/v1/hospital/attendance", json={"reports": reports[:1]}, headers=world.auth("chc_a")
    )
    assert r.status_code == 403


async def test_r13_no_show_is_visible_to_the_referring_institution(client, world, signed):
    referral = await refer(client, world, D1, 1)
    after_slot(world, referral)
    r = await client.post(
        "/v1/hospital/attendance",
        json={"reports": [{"reference": referral["reference"], "outcome": "no_show", "note": "未到诊"}]},
        headers=world.auth("city_hospital"),
    )
    assert r.status_code == 200
    r = await client.get(f"/v1/referrals/{referral['reference']}", headers=world.auth("chc_a"))
    attendance = r.json()["attendance"]
    assert (attendance["outcome"], attendance["note"]) == ("no_show", "未到诊")
    [item] = (await client.get("/v1/referrals", headers=world.auth("chc_a"))).json()["items"]
    assert item["attendance"]["outcome"] == "no_show"
    assert (
        await client.get(f"/v1/referrals/{referral['reference']}", headers=world.auth("chc_b"))
    ).status_code == 404


# --- the worklist ----------------------------------------------------------------------------------


async def test_r13_worklist_holds_passed_unreported_referrals_and_never_marks_them(client, world, signed):
    unreported = await refer(client, world, D1, 1)
    reported = await refer(client, world, D1, 2)
    cancelled = await refer(client, world, D1, 3)
    upcoming = await refer(client, world, D2, 4)
    await client.post(
        f"/v1/referrals/{cancelled['reference']}/cancel", json={"reason": "改期"}, headers=world.auth("chc_a")
    )
    world.clock.set(local_datetime(D1, 18))
    await report(client, world, (reported["reference"], "attended"))

    async def worklist(who="city_hospital", **params):
        r = await client.get("/v1/hospital/worklist", params=params, headers=world.auth(who))
        assert r.status_code == 200, r.text
        return r.json()

    assert [i["reference"] for i in (await worklist())["items"]] == [unreported["reference"]]
    world.clock.set(local_datetime(date(2026, 6, 1), 9))  # long after: still there, still unreported
    page = await worklist(limit=1)
    assert [i["reference"] for i in page["items"]] == [unreported["reference"]]
    page = await worklist(limit=1, cursor=page["next_cursor"])
    assert [i["reference"] for i in page["items"]] == [upcoming["reference"]]
    assert page["next_cursor"] is None
    assert page["items"][0]["attendance"] is None
    r = await client.get(f"/v1/referrals/{unreported['reference']}", headers=world.auth("chc_a"))
    assert r.json()["attendance"] is None
    assert (await worklist("district_hospital"))["items"] == []
    r = await client.get(
        "/v1/hospital/worklist", params={"cursor": "bm90LWEtY3Vyc29y"}, headers=world.auth("city_hospital")
    )
    assert (r.status_code, r.json()["code"]) == (422, "invalid_cursor")


# --- what the hospital sees ------------------------------------------------------------------------


async def test_r17_hospital_listing_pages_with_a_cursor_without_gaps_or_duplicates(client, world, signed):
    made = []
    for day, department, seqs in ((D2, "CARD", (1, 2)), (D1, "CARD", (3, 4, 5)), (D1, "NEUR", (6, 7, 8))):
        for seq in seqs:
            made.append((await refer(client, world, day, seq, department=department))["reference"])

    async def pages(who, limit, **params):
        seen, cursor = [], None
        while True:
            query = {"limit": limit, **params} | ({"cursor": cursor} if cursor else {})
            r = await client.get("/v1/referrals", params=query, headers=world.auth(who))
            assert r.status_code == 200, r.text
            seen += [(i["service_date"], i["department"]["code"], i["reference"]) for i in r.json()["items"]]
            cursor = r.json()["next_cursor"]
            if cursor is None:
                return seen

    everything = await pages("city_hospital", 500)
    assert len(everything) == 8
    assert [d for d, _, _ in everything] == sorted(d for d, _, _ in everything)  # by date
    for limit in (1, 3, 7):
        assert await pages("city_hospital", limit) == everything
    assert await pages("chc_a", 3) == everything  # the referring institution pages the same way
    d1_card = await pages("city_hospital", 2, service_date=D1.isoformat(), department_code="CARD")
    assert [ref for _, _, ref in d1_card] == [
        ref for d, c, ref in everything if (d, c) == (D1.isoformat(), "CARD")
    ]
    r = await client.get("/v1/referrals", params={"cursor": "!!"}, headers=world.auth("city_hospital"))
    assert r.status_code == 422
    r = await client.get("/v1/referrals", params={"cursor": "WyJ4Il0"}, headers=world.auth("city_hospital"))
    assert r.json()["code"] == "invalid_cursor"
    [item] = (
        await client.get("/v1/referrals", params={"limit": 1}, headers=world.auth("city_hospital"))
    ).json()["items"]
    assert (item["priority"], item["referring_institution"]["code"], item["diagnoses"]) == (
        True,
        "P-A",
        ["I10"],
    )
    assert item["referring_doctor"]["name"] == "李家庭"
    assert item["consultation"]["encounter_id"].startswith("ENC-")


async def test_r19_receipt_is_seen_by_the_referring_doctor(client, world, signed, db):
    referral = await refer(client, world, D1, 1)
    ref = referral["reference"]
    assert referral["received"] is None
    r = await client.post(
        f"/v1/referrals/{ref}/receive",
        json={"his_reference": "HIS-0001"},
        headers=world.auth("city_hospital"),
    )
    assert r.status_code == 200, r.text
    received = r.json()["received"]
    assert received["his_reference"] == "HIS-0001"
    seen = (await client.get(f"/v1/referrals/{ref}", headers=world.auth("chc_a"))).json()["received"]
    assert seen["his_reference"] == "HIS-0001"
    assert to_local(seen["received_at"]) == to_local(received["received_at"]) == world.clock.now()
    world.clock.advance(timedelta(minutes=5))
    again = await client.post(
        f"/v1/referrals/{ref}/receive",
        json={"his_reference": "HIS-0001"},
        headers=world.auth("city_hospital"),
    )
    # Idempotent: the first receipt stands.
    assert to_local(again.json()["received"]["received_at"]) == to_local(received["received_at"])
    assert len(await audit(db, "referral.received")) == 1
    r = await client.post(
        f"/v1/referrals/{ref}/receive",
        json={"his_reference": "HIS-9999"},
        headers=world.auth("city_hospital"),
    )
    assert (r.status_code, r.json()["code"]) == (409, "his_reference_conflict")
    r = await client.post(f"/v1/referrals/{ref}/receive", headers=world.auth("district_hospital"))
    assert r.status_code == 404
    r = await client.post(f"/v1/referrals/{ref}/receive", headers=world.auth("chc_a"))
    assert r.status_code == 403


async def test_r19_receipt_without_a_his_reference_and_of_a_cancelled_referral(client, world, signed):
    plain = await refer(client, world, D1, 1)
    cancelled = await refer(client, world, D1, 2)
    r = await client.post(f"/v1/referrals/{plain['reference']}/receive", headers=world.auth("city_hospital"))
    assert r.status_code == 200
    assert r.json()["received"]["his_reference"] is None
    r = await client.post(
        f"/v1/referrals/{plain['reference']}/receive",
        json={"his_reference": "HIS-7"},
        headers=world.auth("city_hospital"),
    )
    assert r.json()["received"]["his_reference"] == "HIS-7"  # a later call may add the HIS reference
    await client.post(
        f"/v1/referrals/{cancelled['reference']}/cancel", json={"reason": "改期"}, headers=world.auth("chc_a")
    )
    r = await client.post(
        f"/v1/referrals/{cancelled['reference']}/receive", headers=world.auth("city_hospital")
    )
    assert (r.status_code, r.json()["code"]) == (409, "referral_cancelled")


async def test_r13_concurrent_reports_reach_the_threshold_once(client, world, signed, db, crypto):
    """A report that is deciding waits for another batch deciding for the same resident and hospital.

    Without that, each would count only its own uncommitted no-show and neither would bar.
    """
    await set_city_rule(client, world)
    first = await refer(client, world, D1, 1)
    second = await refer(client, world, D2, 1)
    after_slot(world, second)
    async with db.sessionmaker() as session:
        held = await report_attendance(
            session=session,
            actor=Actor.system("test", now=world.clock.now()),
            crypto=crypto,
            hospital_id=world.ids["city_hospital"],
            reports=[AttendanceReport(reference=first["reference"], outcome="no_show")],
        )
        assert held.results[0].bar is None
        other = asyncio.create_task(report(client, world, (second["reference"], "no_show")))
        await until_a_session_waits_on_a_lock(db)
        assert not other.done()
        await session.commit()
    body = await other
    assert body["results"][0]["bar"]["effect"] == "started"
    assert await bar_count(db) == 1


async def test_r13_a_booking_waits_for_a_bar_being_decided(client, world, signed, db, crypto):
    """The bar check is in the booking transaction: a booking racing the deciding report sees its bar."""
    await set_city_rule(client, world)
    first = await refer(client, world, D1, 1)
    second = await refer(client, world, D2, 1)
    later = date(2026, 3, 21)
    world.clock.set(local_datetime(later - timedelta(days=8), 9))
    await push(client, world, [session_item("LATER", later, slots=20)])
    [slot, *_] = await pool_slots(client, world, service_date=later.isoformat())
    after_slot(world, second)
    await report(client, world, (first["reference"], "no_show"))
    async with db.sessionmaker() as session:
        held = await report_attendance(
            session=session,
            actor=Actor.system("test", now=world.clock.now()),
            crypto=crypto,
            hospital_id=world.ids["city_hospital"],
            reports=[AttendanceReport(reference=second["reference"], outcome="no_show")],
        )
        assert held.results[0].bar is not None
        world.clock.set(local_datetime(later - timedelta(days=8), 9))
        payload = booking(slot["slot_id"], 1, clock=world.clock)
        racing = asyncio.create_task(client.post("/v1/referrals", json=payload, headers=world.auth("chc_a")))
        await until_a_session_waits_on_a_lock(db)
        assert not racing.done()
        await session.commit()
    r = await racing
    assert (r.status_code, r.json()["code"]) == (403, "resident_barred")


# --- referral.attendance_recorded: what the hospital's other systems hear ----------------------------


async def attendance_events(db) -> list[Event]:
    rows = await db.run(
        lambda s: s.scalars(
            select(Event)
            .where(Event.recipient_id == Event.hospital_id)
            .where(Event.type == "referral.attendance_recorded")
            .order_by(Event.id)
            .order_by(Event.id)
        )
    )
    return list(rows)


async def test_each_recorded_or_corrected_outcome_is_an_event_and_a_repeat_is_not(client, world, signed, db):
    await set_city_rule(client, world)  # 2 no-shows in 30 days bar for 10 days
    first = await refer(client, world, D1, 1)
    second = await refer(client, world, D2, 1)
    after_slot(world, second)  # 12 March, 2 hours after the second slot ended
    reported_at = world.clock.now()

    await report(client, world, (first["reference"], "no_show"))
    await report(client, world, (first["reference"], "no_show"))  # unchanged: no event
    assert len(await attendance_events(db)) == 1
    body = await report(client, world, (second["reference"], "no_show"))
    assert body["results"][0]["bar"]["effect"] == "started"
    world.clock.advance(timedelta(hours=1))
    body = await report(client, world, (second["reference"], "attended"))
    assert (body["results"][0]["result"], body["results"][0]["bar"]["effect"]) == ("corrected", "lifted")
    await report(client, world, (second["reference"], "attended"))  # unchanged again

    events = await attendance_events(db)
    assert [e.hospital_id for e in events] == [world.ids["city_hospital"]] * 3
    for event in events:
        assert list(_validator(event.type).iter_errors(event.payload)) == []
        assert event.payload["timestamp"] == event.payload["data"]["attendance"]["reported_at"]
    data = [e.payload["data"] for e in events]
    assert [(d["referral"]["reference"], d["attendance"]["outcome"]) for d in data] == [
        (first["reference"], "no_show"),
        (second["reference"], "no_show"),
        (second["reference"], "attended"),
    ]
    assert [d["attendance"]["previous_outcome"] for d in data] == [None, None, "no_show"]
    assert [d["no_show_bar"] for d in data] == [
        None,
        {"starts_on": "2026-03-12", "ends_on": "2026-03-21"},
        None,  # the correction lifted the bar; only a bar the report started is carried
    ]
    assert to_local(data[0]["attendance"]["reported_at"]) == reported_at
    assert to_local(data[2]["attendance"]["reported_at"]) == reported_at + timedelta(hours=1)
    # The referral as booked, in the same shape as referral.booked.
    assert data[0]["slot"]["external_id"] == first["slot"]["external_id"]
    assert data[0]["session"]["service_date"] == D1.isoformat()
    assert data[0]["department"]["code"] == "CARD"
    assert data[0]["patient"] == {"name_masked": "张*"}
    text = json.dumps([e.payload for e in events], ensure_ascii=False)
    id_number = synthetic_id("340102", seq=1)
    assert id_number not in text and id_number[:17] not in text and first["resident_id_masked"] not in text


async def test_a_refused_report_is_no_event(client, world, signed, db):
    ok = await refer(client, world, D1, 1)
    cancelled = await refer(client, world, D1, 2)
    r = await client.post(
        f"/v1/referrals/{cancelled['reference']}/cancel", json={"reason": "改期"}, headers=world.auth("chc_a")
    )
    assert r.status_code == 200, r.text
    world.clock.set(to_local(ok["slot"]["starts_at"]) - timedelta(minutes=1))
    body = await report(client, world, (ok["reference"], "attended"), (cancelled["reference"], "attended"))
    assert [r["code"] for r in body["results"]] == ["too_early", "referral_cancelled"]
    other = await report(client, world, (ok["reference"], "attended"), who="district_hospital")
    assert other["results"][0]["code"] == "referral_not_found"
    assert await attendance_events(db) == []
