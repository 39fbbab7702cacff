"""Scalping signals and alerts (R14): each signal's abuse script alerts, a normal script does not."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select

from service.kit.clock import local_datetime
from service.models.audit import AuditEntry
from service.models.signals import Alert
from service.signals.detection import run_detection
from tests.factories import (
    TEST_POLICY,
    add_wuhu_key,
    book,
    booking,
    pool_slots,
    push,
    session_item,
    sign,
    synthetic_id,
)

DAY = date(2026, 3, 10)  # public release Tue 3 March 08:00; the pool is open from Mon 2 March 08:00
PUBLIC_AT = local_datetime(date(2026, 3, 3), 8)
SUNDAY = local_datetime(date(2026, 3, 1), 9)  # the consultations of the day before


async def open_pool(
    client, world, day=DAY, *, titles=("associate_chief",), sizes: dict[str, int] | None = None
) -> dict[str, list[int]]:
    """Push one session per title (50 slots unless ``sizes`` says); the pool's free slot ids by title."""
    items = [
        session_item(f"S-{day}-{title}", day, title=title, doctor_code=f"D-{title}",
                     slots=(sizes or {}).get(title, 50), minutes=10)
        for title in titles
    ]  # fmt: skip
    await push(client, world, items)
    slots = await pool_slots(client, world, service_date=day.isoformat())
    return {title: [s["slot_id"] for s in slots if s["doctor"]["title"] == title] for title in titles}


async def book_many(client, world, slot_ids, seqs, *, spacing=timedelta(minutes=15), first=SUNDAY):
    """One referral per resident, consultations ``spacing`` apart from ``first``."""
    return [
        await book(
            client, world, booking(slot_id, seq, clock=world.clock, encountered_at=first + spacing * i)
        )
        for i, (slot_id, seq) in enumerate(zip(slot_ids, seqs, strict=False))
    ]


async def cancel(client, world, referral):
    r = await client.post(
        f"/v1/referrals/{referral['reference']}/cancel",
        json={"reason": "患者无法前往"},
        headers=world.auth("chc_a"),
    )
    assert r.status_code == 200, r.text


async def detect_and_list(client, world, **params) -> list[dict[str, Any]]:
    await run_detection(world.db, world.clock)
    r = await client.get("/v1/supervision/alerts", params=params, headers=world.auth("commission"))
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def kinds(alerts) -> set[tuple[str, str]]:
    return {(a["signal"], a["subject_type"]) for a in alerts}


def both(signal: str) -> set[tuple[str, str]]:
    return {(signal, "doctor"), (signal, "institution")}


def evidence(alert) -> set[str]:
    return {e["reference"] for e in alert["evidence"]}


def refs(referrals) -> set[str]:
    return {r["reference"] for r in referrals}


# --- book-then-cancel churn ----------------------------------------------------------------


async def test_r14_churn_booking_then_cancelling_within_hours_alerts(client, world):
    await sign(client, world, list(range(1, 7)))
    slots = (await open_pool(client, world))["associate_chief"]
    referrals = await book_many(client, world, slots, range(1, 7))
    world.clock.advance(timedelta(hours=1))
    for referral in referrals[:4]:
        await cancel(client, world, referral)

    alerts = await detect_and_list(client, world)
    assert kinds(alerts) == both("book_cancel_churn")
    for alert in alerts:
        assert evidence(alert) == refs(referrals[:4])
        assert (alert["value"], alert["threshold"], alert["events"]) == ("0.6667", "0.5000", 6)
        assert alert["institution"]["code"] == "P-A"
    [doctor_alert] = [a for a in alerts if a["subject_type"] == "doctor"]
    assert doctor_alert["doctor"]["code"] == "FD-1"


async def test_r14_churn_normal_cancellations_do_not_alert(client, world):
    await sign(client, world, list(range(1, 9)))
    slots = (await open_pool(client, world))["associate_chief"]
    referrals = await book_many(client, world, slots, range(1, 9))
    world.clock.advance(timedelta(hours=2))
    for referral in referrals[:3]:  # 3 of 8 within the hold: 0.375, under 0.5
        await cancel(client, world, referral)
    world.clock.advance(timedelta(hours=14))
    await cancel(client, world, referrals[3])  # later than the 12-hour hold
    assert await detect_and_list(client, world) == []


# --- cancellations just before the public release -------------------------------------------


async def test_r14_cancelling_just_before_public_release_alerts(client, world):
    await sign(client, world, list(range(1, 7)))
    slots = (await open_pool(client, world))["associate_chief"]
    referrals = await book_many(client, world, slots, range(1, 7))
    world.clock.set(PUBLIC_AT - timedelta(minutes=30))  # 22.5 hours after booking: not churn
    for referral in referrals[:4]:
        await cancel(client, world, referral)

    alerts = await detect_and_list(client, world)
    assert kinds(alerts) == both("cancel_near_release")
    for alert in alerts:
        assert evidence(alert) == refs(referrals[:4])
        assert (alert["value"], alert["events"]) == ("1.0000", 4)
        assert all(e["cancelled_at"] is not None for e in alert["evidence"])


async def test_r14_cancellations_spread_over_the_days_do_not_alert(client, world):
    await sign(client, world, list(range(1, 9)))
    slots = (await open_pool(client, world))["associate_chief"]
    referrals = await book_many(client, world, slots, range(1, 9))
    world.clock.set(PUBLIC_AT - timedelta(minutes=30))
    await cancel(client, world, referrals[0])
    world.clock.set(local_datetime(date(2026, 3, 5), 10))  # patients cancelling days later
    for referral in referrals[1:4]:
        await cancel(client, world, referral)
    assert await detect_and_list(client, world) == []  # 1 of 4 near release: 0.25


# --- referrals for residents signed in the last few days -------------------------------------


async def test_r14_referring_residents_signed_days_ago_alerts(client, world):
    await sign(client, world, list(range(11, 17)), starts_on=date(2026, 3, 1))
    slots = (await open_pool(client, world))["associate_chief"]
    referrals = await book_many(client, world, slots, range(11, 17))

    alerts = await detect_and_list(client, world)
    assert kinds(alerts) == both("new_signing_referrals")
    for alert in alerts:
        assert evidence(alert) == refs(referrals)
        assert alert["value"] == "1.0000"


async def test_r14_some_new_signings_among_long_contracts_do_not_alert(client, world):
    await sign(client, world, [21, 22, 23, 24])
    await sign(client, world, [25, 26, 27, 28], starts_on=date(2026, 2, 28))
    slots = (await open_pool(client, world))["associate_chief"]
    await book_many(client, world, slots, range(21, 29))
    assert await detect_and_list(client, world) == []  # 4 of 8: 0.5, under 0.6


# --- referrals to senior slots only ----------------------------------------------------------


async def test_r14_booking_only_senior_slots_of_a_mixed_pool_alerts(client, world):
    await sign(client, world, list(range(1, 7)))
    # The day's reservation is at least half senior (R4): a mostly junior day keeps the pool mixed.
    sizes = {"associate_chief": 20, "attending": 80}
    pool = await open_pool(client, world, titles=("associate_chief", "attending"), sizes=sizes)
    senior, junior = pool["associate_chief"], pool["attending"]
    assert len(senior) >= 6 and len(junior) >= 3
    assert Decimal(len(senior)) / (len(senior) + len(junior)) <= Decimal("0.6")
    referrals = await book_many(client, world, senior, range(1, 7))

    alerts = await detect_and_list(client, world)
    assert kinds(alerts) == both("senior_only_referrals")
    baseline = Decimal(len(senior)) / (len(senior) + len(junior))
    for alert in alerts:
        assert evidence(alert) == refs(referrals)
        assert Decimal(alert["value"]) == (1 - baseline).quantize(Decimal("0.0001"))
        assert {e["doctor_title"] for e in alert["evidence"]} == {"associate_chief"}


async def test_r14_mostly_senior_referrals_from_a_mixed_pool_do_not_alert(client, world):
    await sign(client, world, list(range(1, 8)))
    pool = await open_pool(client, world, titles=("associate_chief", "attending"))
    senior, junior = pool["associate_chief"], pool["attending"]
    await book_many(client, world, senior[:4] + junior[:3], range(1, 8))
    assert await detect_and_list(client, world) == []


async def test_r14_an_all_senior_pool_never_alerts_for_senior_bookings(client, world):
    await sign(client, world, list(range(1, 9)))
    slots = (await open_pool(client, world))["associate_chief"]
    await book_many(client, world, slots, range(1, 9))
    assert await detect_and_list(client, world) == []


# --- consultations implausibly close together ------------------------------------------------


async def test_r14_consultations_a_minute_apart_across_residents_alert(client, world):
    await sign(client, world, list(range(1, 7)))
    slots = (await open_pool(client, world))["associate_chief"]
    referrals = await book_many(client, world, slots, range(1, 7), spacing=timedelta(minutes=1))

    alerts = await detect_and_list(client, world)
    assert kinds(alerts) == both("consultation_burst")
    for alert in alerts:
        assert evidence(alert) == refs(referrals)


async def test_r14_one_couple_seen_together_does_not_alert(client, world):
    await sign(client, world, list(range(1, 9)))
    slots = (await open_pool(client, world))["associate_chief"]
    referrals = await book_many(client, world, slots[:6], range(1, 7))  # 15 minutes apart
    couple = SUNDAY + timedelta(hours=3)
    referrals.append(
        await book(client, world, booking(slots[6], 7, clock=world.clock, encountered_at=couple))
    )
    referrals.append(
        await book(
            client,
            world,
            booking(slots[7], 8, clock=world.clock, encountered_at=couple + timedelta(minutes=2)),
        )
    )
    assert await detect_and_list(client, world) == []  # 2 of 8: 0.25


# --- consultations outside the institution's opening hours -----------------------------------


async def test_r14_consultations_at_night_alert(client, world):
    await sign(client, world, list(range(1, 7)))
    slots = (await open_pool(client, world))["associate_chief"]
    night = local_datetime(date(2026, 3, 1), 19)
    referrals = await book_many(client, world, slots, range(1, 7), first=night, spacing=timedelta(minutes=20))

    alerts = await detect_and_list(client, world)
    assert kinds(alerts) == both("consultation_off_hours")
    for alert in alerts:
        assert evidence(alert) == refs(referrals)


async def test_r14_a_few_evening_consultations_do_not_alert(client, world):
    await sign(client, world, list(range(1, 9)))
    slots = (await open_pool(client, world))["associate_chief"]
    await book_many(client, world, slots[:6], range(1, 7))
    evening = local_datetime(date(2026, 3, 1), 17, 50)
    await book_many(client, world, slots[6:8], [7, 8], first=evening, spacing=timedelta(minutes=20))
    assert await detect_and_list(client, world) == []  # 18:10 and 17:50: 1 of 8 outside


async def test_r14_opening_hours_set_by_the_commission_decide(client, world):
    hours = {
        day: [["08:00", "12:00"], ["14:00", "17:00"]] for day in ("mon", "tue", "wed", "thu", "fri", "sat")
    }
    r = await client.put(
        f"/v1/organisations/{world.ids['chc_a']}/opening-hours",
        json={"opening_hours": hours},
        headers=world.auth("commission"),
    )
    assert r.status_code == 200, r.text
    assert "sun" not in r.json()["opening_hours"]
    await sign(client, world, list(range(1, 9)))
    slots = (await open_pool(client, world))["associate_chief"]
    referrals = await book_many(client, world, slots, range(1, 9))  # Sunday: closed now

    alerts = await detect_and_list(client, world)
    assert kinds(alerts) == both("consultation_off_hours")
    assert evidence(alerts[0]) == refs(referrals)


async def test_r14_opening_hours_are_validated_and_scoped(client, world, crypto):
    bad = await client.put(
        f"/v1/organisations/{world.ids['chc_a']}/opening-hours",
        json={"opening_hours": {"mon": [["18:00", "07:30"]]}},
        headers=world.auth("commission"),
    )
    assert bad.status_code == 422
    wrong_role = await client.put(
        f"/v1/organisations/{world.ids['chc_a']}/opening-hours",
        json={"opening_hours": None},
        headers=world.auth("chc_a"),
    )
    assert wrong_role.status_code == 403
    other = await other_commission(world, crypto)
    far = await client.put(
        f"/v1/organisations/{world.ids['chc_a']}/opening-hours",
        json={"opening_hours": None},
        headers=other,
    )
    assert (far.status_code, far.json()["code"]) == (404, "organisation_not_found")


# --- thresholds are policy data --------------------------------------------------------------


async def publish_city_policy(client, world, thresholds) -> dict[str, Any]:
    body = {k: str(v) if isinstance(v, Decimal | date) else v for k, v in TEST_POLICY.items()}
    body["signal_thresholds"] = thresholds
    r = await client.post("/v1/policies", json=body, headers=world.auth("commission"))
    return {"status": r.status_code, **r.json()}


async def test_r14_the_hospital_policy_sets_the_thresholds(client, world):
    rule = {"window_hours": 48, "min_events": 4, "threshold": 0.3, "hold_hours": 12}
    published = await publish_city_policy(client, world, {"book_cancel_churn": rule})
    assert published["status"] == 201, published
    assert published["signal_thresholds"]["book_cancel_churn"] == rule
    assert published["signal_thresholds"]["consultation_burst"]["gap_minutes"] == 3  # default kept
    await sign(client, world, list(range(1, 9)))
    slots = (await open_pool(client, world))["associate_chief"]
    referrals = await book_many(client, world, slots, range(1, 9))
    world.clock.advance(timedelta(hours=1))
    for referral in referrals[:3]:  # 0.375: under the default, over this policy's 0.3
        await cancel(client, world, referral)

    alerts = await detect_and_list(client, world)
    assert kinds(alerts) == both("book_cancel_churn")
    assert {(a["policy_id"], a["threshold"], a["window_hours"]) for a in alerts} == {
        (published["id"], "0.3000", 48)
    }


@pytest.mark.parametrize(
    "thresholds",
    [
        {"book_cancel_churn": {"window_hours": 48, "min_events": 4, "threshold": 1.5, "hold_hours": 12}},
        {"book_cancel_churn": {"window_hours": 0, "min_events": 4, "threshold": 0.5, "hold_hours": 12}},
        {"book_cancel_churn": {"window_hours": 48, "min_events": 4, "threshold": 0.5}},
        {"unknown_signal": {"window_hours": 48, "min_events": 4, "threshold": 0.5}},
        {"consultation_off_hours": {"window_hours": 48, "min_events": 4, "threshold": 0.5, "extra": 1}},
    ],
)
async def test_r14_invalid_thresholds_are_refused(client, world, thresholds):
    assert (await publish_city_policy(client, world, thresholds))["status"] == 422


# --- the alert's life ------------------------------------------------------------------------


async def churn_abuse(client, world, day, seqs) -> list[dict[str, Any]]:
    slots = (await open_pool(client, world, day))["associate_chief"]
    first = world.clock.now() - timedelta(hours=20)
    referrals = await book_many(client, world, slots, seqs, first=first)
    world.clock.advance(timedelta(hours=1))
    for referral in referrals[:4]:
        await cancel(client, world, referral)
    return referrals


async def test_r14_a_live_alert_is_updated_not_duplicated_and_a_new_one_follows_its_close(client, world, db):
    await sign(client, world, list(range(1, 13)))
    first = await churn_abuse(client, world, DAY, range(1, 7))
    [alert] = await detect_and_list(client, world, subject_type="doctor")
    world.clock.advance(timedelta(hours=1))
    [again] = await detect_and_list(client, world, subject_type="doctor")
    assert again["id"] == alert["id"]
    assert again["first_seen_at"] == alert["first_seen_at"]
    assert again["last_seen_at"] > alert["last_seen_at"]

    world.clock.set(local_datetime(date(2026, 3, 10), 8))  # the 7-day window slides past every referral
    assert await detect_and_list(client, world, status="open") == []
    [closed] = await detect_and_list(client, world, subject_type="doctor", status="closed")
    assert closed["id"] == alert["id"] and closed["closed_at"] is not None

    world.clock.set(local_datetime(date(2026, 3, 10), 9))  # the pool of 18 March is open
    second = await churn_abuse(client, world, date(2026, 3, 18), range(7, 13))
    [fresh] = await detect_and_list(client, world, subject_type="doctor", status="open")
    assert fresh["id"] != alert["id"]
    assert evidence(fresh) == refs(second[:4])
    assert evidence(closed) == refs(first[:4])
    actions = await db.run(
        lambda s: s.scalars(select(AuditEntry.action).where(AuditEntry.action.like("alert.%")))
    )
    assert sorted(actions) == ["alert.closed"] * 2 + ["alert.raised"] * 4


async def test_r14_acknowledged_alerts_stay_single_and_acknowledge_once(client, world):
    await sign(client, world, list(range(1, 7)))
    await churn_abuse(client, world, DAY, range(1, 7))
    [alert] = await detect_and_list(client, world, subject_type="institution")
    url = f"/v1/supervision/alerts/{alert['id']}/acknowledge"
    r = await client.post(url, json={"note": "已约谈该机构"}, headers=world.auth("commission"))
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["acknowledgement_note"]) == ("acknowledged", "已约谈该机构")
    again = await client.post(url, headers=world.auth("commission"))
    assert (again.status_code, again.json()["code"]) == (409, "already_acknowledged")

    world.clock.advance(timedelta(hours=1))
    assert [a["id"] for a in await detect_and_list(client, world, subject_type="institution")] == [
        alert["id"]
    ]
    assert await detect_and_list(client, world, status="open", subject_type="institution") == []
    [kept] = await detect_and_list(client, world, status="acknowledged")
    assert kept["id"] == alert["id"]


async def test_r14_evidence_is_masked_and_reads_are_audited(client, world, db):
    await sign(client, world, list(range(1, 7)))
    referrals = await churn_abuse(client, world, DAY, range(1, 7))
    [alert] = await detect_and_list(client, world, subject_type="doctor")
    r = await client.get(f"/v1/supervision/alerts/{alert['id']}", headers=world.auth("commission"))
    assert r.status_code == 200
    body = r.json()
    assert {e["resident_name_masked"] for e in body["evidence"]} == {"张*"}
    assert {e["hospital"]["code"] for e in body["evidence"]} == {"H-CITY"}
    assert {e["service_date"] for e in body["evidence"]} == {DAY.isoformat()}
    for seq in range(1, 7):
        assert synthetic_id("340102", seq=seq) not in r.text
    reads = list(
        await db.run(
            lambda s: s.scalars(
                select(AuditEntry).where(AuditEntry.action == "alerts.read").order_by(AuditEntry.id)
            )
        )
    )
    assert len(reads) == 2  # the list, then the one alert
    assert reads[-1].detail["alert_ids"] == [alert["id"]]
    ids = {referral["reference"] for referral in referrals[:4]}
    assert evidence(body) == ids


async def other_commission(world, crypto) -> dict[str, str]:
    """A commission of Wuhu, which covers none of the test hospitals or institutions."""
    await add_wuhu_key(world, crypto, "wuhu_commission", "commission")
    return world.auth("wuhu_commission")


async def test_r14_alerts_are_scoped_to_the_commission_region_and_role(client, world, crypto):
    await sign(client, world, list(range(1, 7)))
    await churn_abuse(client, world, DAY, range(1, 7))
    [alert, _] = await detect_and_list(client, world)
    other = await other_commission(world, crypto)
    r = await client.get("/v1/supervision/alerts", headers=other)
    assert (r.status_code, r.json()["items"]) == (200, [])
    one = await client.get(f"/v1/supervision/alerts/{alert['id']}", headers=other)
    assert (one.status_code, one.json()["code"]) == (404, "alert_not_found")
    ack = await client.post(f"/v1/supervision/alerts/{alert['id']}/acknowledge", headers=other)
    assert ack.status_code == 404
    for who in ("chc_a", "city_hospital", "platform"):
        assert (await client.get("/v1/supervision/alerts", headers=world.auth(who))).status_code == 403


async def test_r14_alerts_page_by_cursor_and_filter(client, world):
    await sign(client, world, list(range(1, 7)))
    await churn_abuse(client, world, DAY, range(1, 7))
    await run_detection(world.db, world.clock)
    seen = []
    params: dict[str, Any] = {"limit": 1}
    while True:
        r = await client.get("/v1/supervision/alerts", params=params, headers=world.auth("commission"))
        assert r.status_code == 200
        seen += [a["id"] for a in r.json()["items"]]
        if not r.json()["next_cursor"]:
            break
        params["cursor"] = r.json()["next_cursor"]
    assert len(seen) == 2 and seen == sorted(seen, reverse=True)
    r = await client.get(
        "/v1/supervision/alerts", params={"signal": "consultation_burst"}, headers=world.auth("commission")
    )
    assert r.json()["items"] == []
    r = await client.get(
        "/v1/supervision/alerts",
        params={"institution_id": world.ids["chc_a"]},
        headers=world.auth("commission"),
    )
    [doctor_alert] = [a for a in r.json()["items"] if a["subject_type"] == "doctor"]
    assert len(r.json()["items"]) == 2
    r = await client.get(
        "/v1/supervision/alerts",
        params={"doctor_id": doctor_alert["doctor"]["id"]},
        headers=world.auth("commission"),
    )
    assert [a["id"] for a in r.json()["items"]] == [doctor_alert["id"]]
    bad = await client.get(
        "/v1/supervision/alerts", params={"cursor": "AAAA"}, headers=world.auth("commission")
    )
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_cursor")


async def test_r14_concurrent_passes_raise_each_alert_once(client, world, db):
    await sign(client, world, list(range(1, 7)))
    await churn_abuse(client, world, DAY, range(1, 7))
    results = await asyncio.gather(*(run_detection(db, world.clock) for _ in range(4)))
    assert sum(r.raised for r in results if r is not None) == 2
    assert await db.run(lambda s: s.scalar(select(func.count()).select_from(Alert))) == 2
