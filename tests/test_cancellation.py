"""Cancelling through the family doctor or the hotline (R12), and the release loop (R6)."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta

import pytest
from sqlalchemy import select

from service.models.audit import AuditEntry
from service.models.events import Event
from service.models.slots import Slot
from service.slots.release import release_due_slots
from tests.factories import booked_referral, booking, pool_slots, push, session_item, sign

DAY = date(2026, 3, 10)


@pytest.fixture
async def referral(client, world):
    return await booked_referral(client, world, DAY, [1, 2])


async def events_of(db, kind):
    return [
        e.payload
        for e in await db.run(
            lambda s: s.scalars(
                select(Event)
                .where(Event.recipient_id == Event.hospital_id)
                .where(Event.type == kind)
                .order_by(Event.id)
            )
        )
    ]


async def test_r12_family_doctor_cancels_and_the_slot_returns_to_the_pool(client, world, referral, db):
    r = await client.post(
        f"/v1/referrals/{referral['reference']}/cancel",
        json={"reason": "患者改期"},
        headers=world.auth("chc_a"),
    )
    assert r.status_code == 200
    assert r.json()["cancelled_by"] == "family_doctor"
    assert referral["slot"]["id"] in {s["slot_id"] for s in await pool_slots(client, world)}
    [event] = await events_of(db, "referral.cancelled")
    assert event["data"]["cancellation"] == {
        "by": "family_doctor",
        "reason": "患者改期",
        "slot_returned_to": "pool",
    }
    audit = await db.run(
        lambda s: s.scalars(
            select(AuditEntry).where(AuditEntry.action == "referral.cancelled").order_by(AuditEntry.id)
        )
    )
    assert [(a.reason, a.actor_org_id) for a in audit] == [("患者改期", world.ids["chc_a"])]


async def test_r12_cancel_twice_is_a_409(client, world, referral):
    url = f"/v1/referrals/{referral['reference']}/cancel"
    assert (await client.post(url, json={"reason": "a"}, headers=world.auth("chc_a"))).status_code == 200
    r = await client.post(url, json={"reason": "a"}, headers=world.auth("chc_a"))
    assert r.status_code == 409
    assert r.json()["code"] == "already_cancelled"


async def test_r12_hotline_cancels_with_reference_and_code(client, world, referral):
    body = {
        "reference": referral["reference"],
        "verification_code": referral["verification_code"],
        "reason": "电话取消",
    }
    r = await client.post("/v1/hotline/cancellations", json=body, headers=world.auth("hotline"))
    assert r.status_code == 200, r.text
    assert r.json()["cancelled_by"] == "hotline"
    assert r.json()["verification_code"] is None


async def test_r12_hotline_needs_the_right_code(client, world, referral):
    wrong = f"{(int(referral['verification_code']) + 1) % 1_000_000:06d}"
    body = {"reference": referral["reference"], "verification_code": wrong, "reason": "电话取消"}
    r = await client.post("/v1/hotline/cancellations", json=body, headers=world.auth("hotline"))
    assert r.status_code == 422
    assert r.json()["code"] == "verification_failed"
    r = await client.get(f"/v1/referrals/{referral['reference']}", headers=world.auth("chc_a"))
    assert r.json()["status"] == "booked"


async def test_r12_cancellation_closes_at_the_cut_off(client, world, clock, referral):
    starts = datetime.fromisoformat(referral["slot"]["starts_at"])
    clock.set(starts - timedelta(minutes=119))  # policy cut-off: 120 minutes before
    r = await client.post(
        f"/v1/referrals/{referral['reference']}/cancel", json={"reason": "late"}, headers=world.auth("chc_a")
    )
    assert r.status_code == 409
    assert r.json()["code"] == "cancellation_closed"


async def test_r6_r12_cancel_after_public_release_returns_the_slot_to_the_public(
    client, world, clock, referral, db
):
    clock.set(datetime.fromisoformat(referral["notice"]["cancel_deadline"]) - timedelta(hours=1))
    r = await client.post(
        f"/v1/referrals/{referral['reference']}/cancel", json={"reason": "x"}, headers=world.auth("chc_a")
    )
    assert r.status_code == 200
    [returned] = await events_of(db, "slots.returned")
    assert [s["number"] for s in returned["data"]["slots"]] == [referral["slot"]["number"]]
    slot = await db.run(lambda s: s.get(Slot, referral["slot"]["id"]))
    assert slot.status == "returned"


async def test_r6_release_loop_returns_unbooked_slots_at_public_at(client, world, clock, referral, db):
    assert await release_due_slots(db, clock) == 0  # window still open
    public_at = datetime.fromisoformat((await pool_slots(client, world))[0]["public_at"])
    clock.set(public_at)
    assert await release_due_slots(db, clock) == 1  # the one unbooked reserved slot
    assert await release_due_slots(db, clock) == 0  # idempotent
    [event] = await events_of(db, "slots.returned")
    assert event["data"]["session"]["external_id"] == "S1"
    statuses = sorted(s.status for s in await db.run(lambda s: s.scalars(select(Slot))))
    assert statuses.count("returned") == 1
    assert statuses.count("booked") == 1


async def test_r6_release_catches_up_after_downtime(client, world, clock, db):
    days = [DAY + timedelta(days=i) for i in range(3)]
    await push(client, world, [session_item(f"S{i}", d, slots=10) for i, d in enumerate(days)], days_ahead=0)
    clock.set(datetime(2026, 3, 20, tzinfo=clock.now().tzinfo))  # the loop was down for days
    assert await release_due_slots(db, clock, batch_size=2) == 6
    assert len(await events_of(db, "slots.returned")) >= 3


async def test_r6_two_release_loops_at_once_return_each_slot_exactly_once(client, world, clock, db, clean_db):
    from service.kit.db import Database

    days = [DAY + timedelta(days=i) for i in range(5)]
    items = [
        session_item(f"S{i}-{p}", d, slots=20, period=p, doctor_code=f"D{p}")
        for i, d in enumerate(days)
        for p in ("morning", "afternoon")
    ]
    await push(client, world, items, days_ahead=0)
    reserved = list(await db.run(lambda s: s.scalars(select(Slot).where(Slot.status == "reserved"))))
    assert len(reserved) == 40
    clock.set(datetime(2026, 3, 20, tzinfo=clock.now().tzinfo))
    other = Database(clean_db, pool_size=2)
    try:
        counts = await asyncio.gather(
            release_due_slots(db, clock, batch_size=3), release_due_slots(other, clock, batch_size=3)
        )
    finally:
        await other.dispose()
    assert sum(counts) == 40
    returned = [n for e in await events_of(db, "slots.returned") for n in e["data"]["slots"]]
    keys = [(s["external_id"]) for s in returned]
    assert len(keys) == len(set(keys)) == 40


async def test_r6_booking_racing_the_release_loop_never_double_assigns(client, world, clock, db):
    await push(client, world, [session_item("S1", DAY, slots=50)])
    await sign(client, world, list(range(1, 11)))
    slots = await pool_slots(client, world)
    public_at = datetime.fromisoformat(slots[0]["public_at"])
    clock.set(public_at - timedelta(microseconds=1))
    bookings = [
        client.post(
            "/v1/referrals", json=booking(slot["slot_id"], i + 1, clock=clock), headers=world.auth("chc_a")
        )
        for i, slot in enumerate(slots)
    ]
    release_clock = type(clock)(public_at)
    results = await asyncio.gather(*bookings, release_due_slots(db, release_clock))
    booked = [r for r in results[:-1] if r.status_code == 201]
    statuses = {s.id: s.status for s in await db.run(lambda s: s.scalars(select(Slot)))}
    for slot in slots:
        assert statuses[slot["slot_id"]] in ("booked", "returned")
    assert sum(statuses[s["slot_id"]] == "booked" for s in slots) == len(booked)
    assert results[-1] == len(slots) - len(booked)
