"""The waiting list (候补): entries checked and counted as bookings, freed slots offered in line
(docs/waitlist.md)."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from service.kit.clock import instant, local_datetime
from service.kit.dberrors import constraint_name
from service.models.audit import AuditEntry
from service.models.policy import Policy
from service.models.registry import Department, Organisation
from service.models.slots import ClinicSession, Slot
from service.models.waitlist import WaitlistEntry, WaitlistOffer
from service.referrals.waitlist.events import offer_event_data
from service.referrals.waitlist.offers import run_waitlist_pass
from service.slots.release import release_due_slots
from tests.factories import (
    book,
    booking,
    pool_slots,
    post_referral,
    push,
    session_item,
    sign,
    synthetic_id,
    waitlist_entry,
)

DAY = date(2026, 3, 10)  # public release 3 March 08:00; the pool opened 2 March 08:00; now 2 March 09:00
SCHEMA = (
    Path(__file__).resolve().parent.parent
    / "contracts"
    / "events"
    / "institution"
    / "waitlist.offered.v1.schema.json"
)


async def _setup(client, world, signed: list[int]) -> tuple[list[dict[str, Any]], int]:
    """Session S1 on DAY with its two pool slots, residents ``signed`` with chc_a's FD-1."""
    await push(client, world, [session_item("S1", DAY, slots=10)])
    await sign(client, world, signed)
    slots = await pool_slots(client, world)
    return slots, slots[0]["department"]["id"]


async def enter(client, world, seq: int, department_id: int, **kwargs: Any) -> Any:
    body = waitlist_entry(
        seq, clock=world.clock, hospital_id=world.ids["city_hospital"], department_id=department_id,
        from_date=kwargs.pop("from_date", DAY), **kwargs,
    )  # fmt: skip
    return await client.post("/v1/waitlist/entries", json=body, headers=world.auth("chc_a"))


async def cancel(client, world, reference: str) -> None:
    r = await client.post(
        f"/v1/referrals/{reference}/cancel", json={"reason": "患者改期"}, headers=world.auth("chc_a")
    )
    assert r.status_code == 200, r.text


async def offers(client, world, who: str = "chc_a") -> list[dict[str, Any]]:
    r = await client.get("/v1/waitlist/offers", headers=world.auth(who))
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def set_policy(db, **values: Any) -> None:
    await db.run(lambda s: s.execute(update(Policy).where(Policy.code == "test-city").values(**values)))


async def booked_then_cancelled(client, world, slot_id: int, seq: int) -> dict[str, Any]:
    """Resident ``seq`` books ``slot_id``, then cancels: the slot is freed in its pool window."""
    referral = await book(client, world, booking(slot_id, seq, clock=world.clock))
    await cancel(client, world, referral["reference"])
    return referral


async def slot_status(db, slot_id: int) -> str:
    return str(await db.run(lambda s: s.scalar(select(Slot.status).where(Slot.id == slot_id))))


# --- entries ------------------------------------------------------------------------------------


async def test_r8_an_entry_is_made_for_a_signed_resident_and_audited(client, world, db):
    _, dept = await _setup(client, world, [1])
    r = await enter(client, world, 1, dept, to_date=DAY + timedelta(days=5))
    assert r.status_code == 201, r.text
    entry = r.json()
    assert entry["status"] == "waiting"
    assert entry["resident_name_masked"] == "张*"
    assert synthetic_id("340102", seq=1) not in r.text
    assert (entry["from_date"], entry["to_date"]) == (DAY.isoformat(), (DAY + timedelta(days=5)).isoformat())
    actions = await db.run(
        lambda s: s.scalars(select(AuditEntry.action).where(AuditEntry.action.like("waitlist.%")))
    )
    assert list(actions) == ["waitlist.entered"]
    listed = await client.get("/v1/waitlist/entries", headers=world.auth("chc_a"))
    assert [e["reference"] for e in listed.json()["items"]] == [entry["reference"]]


async def test_r8_an_unsigned_resident_cannot_wait(client, world, db):
    _, dept = await _setup(client, world, [1])
    r = await enter(client, world, 7, dept)
    assert (r.status_code, r.json()["code"]) == (422, "not_signed")
    refused = await db.run(
        lambda s: s.scalar(select(AuditEntry.code).where(AuditEntry.action == "waitlist.refused"))
    )
    assert refused == "not_signed"


async def test_r10_an_entry_needs_a_covered_diagnosis(client, world):
    _, dept = await _setup(client, world, [1])
    r = await enter(client, world, 1, dept, diagnoses=["J45"])
    assert (r.status_code, r.json()["code"]) == (422, "disease_not_covered")


async def test_one_entry_per_resident_hospital_and_department(client, world):
    _, dept = await _setup(client, world, [1])
    assert (await enter(client, world, 1, dept)).status_code == 201
    r = await enter(client, world, 1, dept, from_date=DAY + timedelta(days=1))
    assert (r.status_code, r.json()["code"]) == (409, "waitlist_entry_exists")


async def test_urgent_needs_a_policy_that_allows_it(client, world, db):
    _, dept = await _setup(client, world, [1, 2])
    r = await enter(client, world, 1, dept, urgent_reason="胸痛加重")
    assert (r.status_code, r.json()["code"]) == (422, "urgent_priority_not_allowed")
    await set_policy(db, waitlist_urgent_priority=True)
    r = await enter(client, world, 1, dept, urgent_reason="胸痛加重")
    assert r.status_code == 201, r.text
    assert (r.json()["urgent"], r.json()["urgent_reason"]) == (True, "胸痛加重")


async def test_r14_entries_count_against_the_resident_active_limit(client, world, db):
    slots, dept = await _setup(client, world, [1])
    await set_policy(db, resident_active_limit=1)
    assert (await enter(client, world, 1, dept)).status_code == 201
    r = await post_referral(client, world, booking(slots[0]["slot_id"], 1, clock=world.clock))
    assert (r.status_code, r.json()["code"]) == (409, "resident_active_limit")


async def test_r14_entries_count_against_the_doctor_hourly_limit(client, world, db):
    slots, dept = await _setup(client, world, [1, 2])
    await set_policy(db, doctor_hourly_limit=1)
    assert (await enter(client, world, 1, dept)).status_code == 201
    r = await post_referral(client, world, booking(slots[0]["slot_id"], 2, clock=world.clock))
    assert (r.status_code, r.json()["code"]) == (409, "doctor_hourly_limit")
    r = await enter(client, world, 2, dept)
    assert (r.status_code, r.json()["code"]) == (409, "doctor_hourly_limit")


# --- offers -------------------------------------------------------------------------------------


async def test_a_cancelled_slot_is_offered_first_come_first_served_and_held(client, world, db):
    slots, dept = await _setup(client, world, [1, 2, 3, 4])
    first = (await enter(client, world, 2, dept)).json()
    world.clock.advance(timedelta(minutes=1))
    await enter(client, world, 3, dept)
    slot_id = slots[0]["slot_id"]
    await booked_then_cancelled(client, world, slot_id, 1)
    [offer] = await offers(client, world)
    assert offer["entry_reference"] == first["reference"]
    assert offer["slot"]["id"] == slot_id
    assert offer["expires_at"] == instant(world.clock.now() + timedelta(minutes=10))
    assert await slot_status(db, slot_id) == "offered"
    # Held: nobody else can book it, and the search does not show it.
    r = await post_referral(client, world, booking(slot_id, 4, clock=world.clock))
    assert (r.status_code, r.json()["code"]) == (409, "slot_taken")
    assert slot_id not in {s["slot_id"] for s in await pool_slots(client, world)}


async def test_accepting_an_offer_books_the_held_slot(client, world, db):
    slots, dept = await _setup(client, world, [1, 2])
    entry = (await enter(client, world, 2, dept)).json()
    slot_id = slots[0]["slot_id"]
    await booked_then_cancelled(client, world, slot_id, 1)
    [offer] = await offers(client, world)
    r = await client.post(f"/v1/waitlist/offers/{offer['reference']}/accept", headers=world.auth("chc_a"))
    assert r.status_code == 201, r.text
    referral = r.json()
    assert (referral["slot"]["id"], referral["status"]) == (slot_id, "booked")
    assert referral["resident_name_masked"] == "张*"
    assert await slot_status(db, slot_id) == "booked"
    [listed] = (await client.get("/v1/waitlist/entries", headers=world.auth("chc_a"))).json()["items"]
    assert (listed["reference"], listed["status"], listed["referral_reference"]) == (
        entry["reference"],
        "booked",
        referral["reference"],
    )
    assert await offers(client, world) == []
    again = await client.post(f"/v1/waitlist/offers/{offer['reference']}/accept", headers=world.auth("chc_a"))
    assert (again.status_code, again.json()["code"]) == (409, "offer_closed")


async def test_r9_the_accept_rechecks_the_booking_rules(client, world, db):
    """A contract that ended after the offer: the booking itself refuses the accept (R8)."""
    slots, dept = await _setup(client, world, [1, 2])
    await enter(client, world, 2, dept)
    await booked_then_cancelled(client, world, slots[0]["slot_id"], 1)
    [offer] = await offers(client, world)
    await db.run(lambda s: s.execute(text("UPDATE family_doctor_contracts SET ends_on = '2026-03-01'")))
    r = await client.post(f"/v1/waitlist/offers/{offer['reference']}/accept", headers=world.auth("chc_a"))
    assert (r.status_code, r.json()["code"]) == (422, "not_signed")
    assert await slot_status(db, slots[0]["slot_id"]) == "offered"


async def test_a_declined_offer_passes_to_the_next_in_line(client, world, db):
    slots, dept = await _setup(client, world, [1, 2, 3])
    first = (await enter(client, world, 2, dept)).json()
    world.clock.advance(timedelta(minutes=1))
    second = (await enter(client, world, 3, dept)).json()
    await booked_then_cancelled(client, world, slots[0]["slot_id"], 1)
    [offer] = await offers(client, world)
    assert offer["entry_reference"] == first["reference"]
    r = await client.post(f"/v1/waitlist/offers/{offer['reference']}/decline", headers=world.auth("chc_a"))
    assert (r.status_code, r.json()["status"]) == (200, "declined")
    [next_offer] = await offers(client, world)
    assert next_offer["entry_reference"] == second["reference"]
    # The first entry keeps its place for other slots.
    statuses = await db.run(lambda s: s.scalars(select(WaitlistEntry.status).order_by(WaitlistEntry.id)))
    assert list(statuses) == ["waiting", "waiting"]


async def test_an_expired_offer_passes_to_the_next_in_line(client, world, db, crypto):
    slots, dept = await _setup(client, world, [1, 2, 3])
    await enter(client, world, 2, dept)
    world.clock.advance(timedelta(minutes=1))
    second = (await enter(client, world, 3, dept)).json()
    await booked_then_cancelled(client, world, slots[0]["slot_id"], 1)
    [offer] = await offers(client, world)
    world.clock.advance(timedelta(minutes=9, seconds=59))
    assert await run_waitlist_pass(db, world.clock, crypto) == 0
    world.clock.advance(timedelta(seconds=1))
    r = await client.post(f"/v1/waitlist/offers/{offer['reference']}/accept", headers=world.auth("chc_a"))
    assert (r.status_code, r.json()["code"]) == (409, "offer_closed")
    assert await run_waitlist_pass(db, world.clock, crypto) == 1
    [next_offer] = await offers(client, world)
    assert next_offer["entry_reference"] == second["reference"]
    world.clock.advance(timedelta(minutes=10))
    assert await run_waitlist_pass(db, world.clock, crypto) == 1
    # Nobody else waits: the slot is back in the pool for anyone.
    assert await offers(client, world) == []
    assert await slot_status(db, slots[0]["slot_id"]) == "reserved"


async def test_urgent_entries_go_first_where_the_policy_allows(client, world, db):
    slots, dept = await _setup(client, world, [1, 2, 3])
    await set_policy(db, waitlist_urgent_priority=True)
    await enter(client, world, 2, dept)
    world.clock.advance(timedelta(minutes=1))
    urgent = (await enter(client, world, 3, dept, urgent_reason="血压控制不佳")).json()
    await booked_then_cancelled(client, world, slots[0]["slot_id"], 1)
    [offer] = await offers(client, world)
    assert offer["entry_reference"] == urgent["reference"]


async def test_an_entry_for_other_days_is_not_offered_the_slot(client, world, db):
    slots, dept = await _setup(client, world, [1, 2])
    await enter(client, world, 2, dept, from_date=DAY + timedelta(days=1), to_date=DAY + timedelta(days=3))
    await booked_then_cancelled(client, world, slots[0]["slot_id"], 1)
    assert await offers(client, world) == []
    assert await slot_status(db, slots[0]["slot_id"]) == "reserved"


async def test_r6_at_public_at_the_offer_lapses_and_the_slot_goes_public(client, world, db, crypto):
    slots, dept = await _setup(client, world, [1, 2])
    await enter(client, world, 2, dept)
    world.clock.set(local_datetime(date(2026, 3, 3), 7, 55))
    await booked_then_cancelled(client, world, slots[0]["slot_id"], 1)
    [offer] = await offers(client, world)
    # Held for its 10 minutes, but never past the public release.
    assert offer["expires_at"] == instant(local_datetime(date(2026, 3, 3), 8))
    world.clock.set(local_datetime(date(2026, 3, 3), 8))
    # The offer loop leaves an offer at its slot's public release to the release.
    assert await run_waitlist_pass(db, world.clock, crypto) == 0
    await release_due_slots(db, world.clock)
    assert await slot_status(db, slots[0]["slot_id"]) == "returned"
    rows = await db.run(
        lambda s: s.execute(select(WaitlistOffer.status, WaitlistEntry.status).join(WaitlistEntry))
    )
    assert [tuple(r) for r in rows] == [("lapsed", "waiting")]


async def test_entries_expire_at_the_end_of_their_date_range(client, world, db, crypto):
    _, dept = await _setup(client, world, [1])
    await enter(client, world, 1, dept, to_date=DAY)
    world.clock.set(local_datetime(DAY, 23, 59))
    await run_waitlist_pass(db, world.clock, crypto)
    assert await db.run(lambda s: s.scalar(select(WaitlistEntry.status))) == "waiting"
    world.clock.set(local_datetime(DAY + timedelta(days=1), 0))
    await run_waitlist_pass(db, world.clock, crypto)
    assert await db.run(lambda s: s.scalar(select(WaitlistEntry.status))) == "expired"


async def test_withdrawing_an_entry_passes_its_offer_on(client, world, db):
    slots, dept = await _setup(client, world, [1, 2, 3])
    first = (await enter(client, world, 2, dept)).json()
    world.clock.advance(timedelta(minutes=1))
    second = (await enter(client, world, 3, dept)).json()
    await booked_then_cancelled(client, world, slots[0]["slot_id"], 1)
    r = await client.post(
        f"/v1/waitlist/entries/{first['reference']}/withdraw",
        json={"reason": "已他院就诊"},
        headers=world.auth("chc_a"),
    )
    assert (r.status_code, r.json()["status"]) == (200, "withdrawn")
    [offer] = await offers(client, world)
    assert offer["entry_reference"] == second["reference"]
    r = await client.post(
        f"/v1/waitlist/entries/{first['reference']}/withdraw",
        json={"reason": "x"},
        headers=world.auth("chc_a"),
    )
    assert (r.status_code, r.json()["code"]) == (409, "waitlist_entry_closed")


async def test_a_withdrawn_session_ends_its_offers(client, world, db):
    slots, dept = await _setup(client, world, [1, 2])
    await enter(client, world, 2, dept)
    await booked_then_cancelled(client, world, slots[0]["slot_id"], 1)
    [offer] = await offers(client, world)
    session_id = await db.run(
        lambda s: s.scalar(select(Slot.session_id).where(Slot.id == slots[0]["slot_id"]))
    )
    r = await client.delete(
        f"/v1/hospital/sessions/{session_id}", params={"reason": "停诊"}, headers=world.auth("city_hospital")
    )
    assert r.status_code < 300, r.text
    status = await db.run(
        lambda s: s.scalar(select(WaitlistOffer.status).where(WaitlistOffer.reference == offer["reference"]))
    )
    assert status == "withdrawn"
    assert await slot_status(db, slots[0]["slot_id"]) == "withdrawn"


# --- what the database holds ----------------------------------------------------------------------


async def test_the_database_holds_one_live_claim_per_slot(client, world, db):
    slots, dept = await _setup(client, world, [1, 2, 3])
    await enter(client, world, 2, dept)
    await enter(client, world, 3, dept)
    await booked_then_cancelled(client, world, slots[0]["slot_id"], 1)

    async def offer_to_the_second(session: Any, slot_id: int) -> None:
        await session.execute(
            text(
                "INSERT INTO waitlist_offers (reference, entry_id, slot_id, hospital_id, booker_org_id, status,"
                " offered_at, expires_at) SELECT :reference, id, :slot_id, hospital_id, booker_org_id, 'pending',"
                " now(), now() + interval '1 minute' FROM waitlist_entries ORDER BY id DESC LIMIT 1"
            ),
            {"slot_id": slot_id, "reference": f"OTEST{slot_id}"},
        )

    # A slot nobody claimed as offered: the trigger refuses the offer.
    with pytest.raises(IntegrityError) as refused:
        await db.run(lambda s: offer_to_the_second(s, slots[1]["slot_id"]))
    assert constraint_name(refused.value) == "ck_waitlist_offers_slot_claimed"
    # A second live offer on the offered slot: the partial unique index refuses it.
    with pytest.raises(IntegrityError) as refused:
        await db.run(lambda s: offer_to_the_second(s, slots[0]["slot_id"]))
    assert constraint_name(refused.value) == "uq_waitlist_offers_pending_slot"
    # And a booking cannot claim the offered slot: its claim wants ``reserved``.
    claimed = await db.run(
        lambda s: s.scalar(
            text("UPDATE slots SET status = 'booked' WHERE id = :id AND status = 'reserved' RETURNING id"),
            {"id": slots[0]["slot_id"]},
        )
    )
    assert claimed is None


async def test_the_offer_event_matches_its_schema_and_carries_no_id_number(client, world, db, crypto):
    slots, dept = await _setup(client, world, [1, 2])
    await enter(client, world, 2, dept)
    await booked_then_cancelled(client, world, slots[0]["slot_id"], 1)

    async def build(session: Any) -> dict[str, Any]:
        offer = await session.scalar(select(WaitlistOffer))
        entry = await session.get(WaitlistEntry, offer.entry_id)
        slot = await session.get(Slot, offer.slot_id)
        cs = await session.get(ClinicSession, slot.session_id)
        return offer_event_data(
            offer=offer, entry=entry, slot=slot, clinic_session=cs,
            hospital=await session.get(Organisation, slot.hospital_id),
            department=await session.get(Department, cs.department_id),
            resident_name_masked="张*",
        )  # fmt: skip

    data = await db.run(build)
    envelope = {
        "type": "waitlist.offered",
        "version": 1,
        "timestamp": instant(world.clock.now()),
        "data": data,
    }
    Draft202012Validator(json.loads(SCHEMA.read_text())).validate(envelope)
    text_form = json.dumps(envelope, ensure_ascii=False)
    assert synthetic_id("340102", seq=2) not in text_form
    assert data["slot"]["number"] == slots[0]["number"]


# --- what the commission and the platforms see ------------------------------------------------------


async def test_r20_the_feed_counts_waiting_entries_without_personal_data(client, world, db):
    _, dept = await _setup(client, world, [1, 2, 3])
    await set_policy(db, waitlist_urgent_priority=True)
    await enter(client, world, 1, dept)
    await enter(client, world, 2, dept, urgent_reason="血糖控制差")
    # Waiting for days after the window: not this window's demand.
    await enter(client, world, 3, dept, from_date=DAY + timedelta(days=9))
    params = {"region": "340100", "from": DAY.isoformat(), "to": DAY.isoformat()}
    r = await client.get("/v1/availability", params=params, headers=world.auth("platform"))
    assert r.status_code == 200, r.text
    assert r.json()["waiting_lists"] == [
        {
            "hospital_id": world.ids["city_hospital"],
            "department_code": "CARD",
            "resource_kind": "outpatient",
            "waiting": 2,
            "urgent": 1,
        }
    ]
    assert "张" not in r.text and synthetic_id("340102", seq=1) not in r.text
    # A new entry changes the answer, so a platform revalidating with its ETag sees it.
    etag = r.headers["ETag"]
    await sign(client, world, [4])
    await enter(client, world, 4, dept)
    again = await client.get(
        "/v1/availability", params=params, headers=world.auth("platform") | {"If-None-Match": etag}
    )
    assert again.status_code == 200
    assert again.json()["waiting_lists"][0]["waiting"] == 3


async def test_an_offered_slot_shows_as_taken_in_the_feed_and_stays_reserved_in_the_report(client, world, db):
    slots, dept = await _setup(client, world, [1, 2])
    await enter(client, world, 2, dept)
    params = {"region": "340100", "from": DAY.isoformat(), "to": DAY.isoformat()}
    before = (await client.get("/v1/availability", params=params, headers=world.auth("platform"))).json()
    await booked_then_cancelled(client, world, slots[0]["slot_id"], 1)
    after = (await client.get("/v1/availability", params=params, headers=world.auth("platform"))).json()
    [item_before], [item_after] = before["items"], after["items"]
    assert (item_after["pool_open"], item_after["booked"]) == (
        item_before["pool_open"] - 1,
        item_before["booked"] + 1,
    )
    report = await client.get(
        "/v1/reports/compliance",
        params={"from": DAY.isoformat(), "to": DAY.isoformat(), "hospital_id": world.ids["city_hospital"]},
        headers=world.auth("commission"),
    )
    assert report.status_code == 200, report.text
    assert report.json()["rows"][0]["reserved"] == 2


async def test_r20_the_compliance_report_shows_unmet_demand_per_department(client, world, db, crypto):
    _, dept = await _setup(client, world, [1, 2, 3])
    await set_policy(db, waitlist_urgent_priority=True)
    await enter(client, world, 1, dept)
    await enter(client, world, 2, dept, urgent_reason="血糖控制差")
    await enter(client, world, 3, dept, from_date=DAY + timedelta(days=1))  # ends the day after DAY

    async def report(day_from: date, day_to: date) -> Any:
        r = await client.get(
            "/v1/reports/compliance",
            params={
                "from": day_from.isoformat(),
                "to": day_to.isoformat(),
                "hospital_id": world.ids["city_hospital"],
            },
            headers=world.auth("commission"),
        )
        assert r.status_code == 200, r.text
        return r.json()["waiting_lists"]

    department = {"id": dept, "code": "CARD", "name": "心血管内科"}
    hospital = {"id": world.ids["city_hospital"], "name": "合肥市第一人民医院"}
    assert await report(DAY, DAY) == [
        {"hospital": hospital, "department": department, "waiting": 2, "urgent": 1, "expired_unmet": 0}
    ]
    assert (await report(DAY, DAY + timedelta(days=1)))[0]["waiting"] == 3
    # After the range ends, the entries that got no slot are the unmet demand of those days.
    world.clock.set(local_datetime(DAY + timedelta(days=2), 9))
    await run_waitlist_pass(db, world.clock, crypto)
    assert await report(DAY, DAY + timedelta(days=1)) == [
        {"hospital": hospital, "department": department, "waiting": 0, "urgent": 0, "expired_unmet": 3}
    ]
    csv = await client.get(
        "/v1/reports/compliance",
        params={"from": DAY.isoformat(), "to": DAY.isoformat(), "format": "csv"},
        headers=world.auth("commission"),
    )
    assert csv.status_code == 200


async def test_r19_the_hospital_sees_an_offered_slot_as_reserved_and_cannot_move_it(client, world, db):
    slots, dept = await _setup(client, world, [1, 2])
    await enter(client, world, 2, dept)
    await booked_then_cancelled(client, world, slots[0]["slot_id"], 1)
    r = await client.get(
        "/v1/hospital/sessions", params={"service_date": DAY.isoformat()}, headers=world.auth("city_hospital")
    )
    assert r.status_code == 200, r.text
    [state] = [s for s in r.json()["items"][0]["slots"] if s["slot_id"] == slots[0]["slot_id"]]
    assert (state["status"], state["in_pool"]) == ("reserved", True)
    # Held for the offer like a booking: an update may not move it from under the resident.
    moved = session_item("S1", DAY, slots=10, version=2, first_hour=9)
    [result] = await push(client, world, [moved], days_ahead=0)
    assert result["result"] == "rejected"
    assert {e["code"] for e in result["errors"]} == {"booked_slot_changed"}
    assert await slot_status(db, slots[0]["slot_id"]) == "offered"
