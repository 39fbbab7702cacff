"""A session pushed in error can be removed by its hospital or its commission, and leaves every view."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import select

from service.models.audit import AuditEntry
from service.models.events import Event
from service.models.referrals import Referral
from tests.factories import add_wuhu_key, booking, pool_slots, push, session_item, sign

DAY = date(2026, 3, 10)
REASON = {"reason": "日期推送错误"}
FEED = {"region": "340100", "from": "2026-03-09", "to": "2026-03-15"}


async def booked_session(client, world, clock) -> tuple[int, str]:
    """Session S1 of 10 slots with one referral booked on it; S2, another session that day, untouched."""
    [s1] = await push(client, world, [session_item("S1", DAY, slots=10)])
    await push(client, world, [session_item("S2", DAY, slots=10, title="chief", doctor_code="D2")])
    await sign(client, world, [1])
    mine = [s for s in await pool_slots(client, world) if s["doctor"]["title"] == "associate_chief"]
    r = await client.post(
        "/v1/referrals", json=booking(mine[0]["slot_id"], 1, clock=clock), headers=world.auth("chc_a")
    )
    assert r.status_code == 201, r.text
    return s1["session_id"], r.json()["reference"]


async def report_row(client, world) -> dict[str, Any]:
    r = await client.get(
        "/v1/reports/compliance", params={"from": DAY.isoformat(), "to": DAY.isoformat()},
        headers=world.auth("commission"),
    )  # fmt: skip
    assert r.status_code == 200, r.text
    [row] = r.json()["rows"]
    return dict(row)


async def test_hospital_removal_cancels_the_referrals_as_a_withdrawal_does(client, world, clock, db):
    session_id, reference = await booked_session(client, world, clock)
    r = await client.delete(
        f"/v1/hospital/sessions/{session_id}", params=REASON, headers=world.auth("city_hospital")
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "session_id": session_id, "external_id": "S1", "status": "removed", "cancelled_referrals": [reference],
    }  # fmt: skip
    r = await client.get(f"/v1/referrals/{reference}", headers=world.auth("chc_a"))
    assert (r.json()["status"], r.json()["cancelled_by"], r.json()["cancel_reason"]) == (
        "cancelled", "hospital", "日期推送错误",
    )  # fmt: skip
    events = await db.run(
        lambda s: s.scalars(
            select(Event)
            .where(Event.recipient_id == Event.hospital_id)
            .where(Event.type == "referral.cancelled")
            .order_by(Event.id)
        )
    )
    [event] = list(events)
    assert event.payload["data"]["cancellation"] == {
        "by": "hospital",
        "reason": "日期推送错误",
        "slot_returned_to": None,
    }


async def test_removal_is_audited_with_the_state_before(client, world, clock, db):
    session_id, reference = await booked_session(client, world, clock)
    await client.delete(
        f"/v1/hospital/sessions/{session_id}", params=REASON, headers=world.auth("city_hospital")
    )
    entries = await db.run(
        lambda s: s.scalars(
            select(AuditEntry).where(AuditEntry.action == "session.removed").order_by(AuditEntry.id)
        )
    )
    [entry] = list(entries)
    assert entry.actor_org_id == world.ids["city_hospital"]
    assert entry.reason == "日期推送错误"
    before = entry.detail["before"]
    assert (before["external_id"], before["status"], before["service_date"]) == ("S1", "active", "2026-03-10")
    assert before["slots"] == {"public": 8, "reserved": 1, "booked": 1}
    assert before["booked_referrals"] == [reference]


async def test_removed_slots_leave_fhir_the_feed_the_pool_and_the_report_counts(client, world, clock, db):
    session_id, _ = await booked_session(client, world, clock)
    before = await report_row(client, world)
    assert (before["offered"], before["pool_bookings"]) == (20, 1)
    await client.delete(
        f"/v1/hospital/sessions/{session_id}", params=REASON, headers=world.auth("city_hospital")
    )

    r = await client.get(f"/fhir/Schedule/{session_id}", headers=world.auth("commission"))
    assert r.status_code == 404
    r = await client.get(
        "/fhir/Slot", params={"schedule": f"Schedule/{session_id}"}, headers=world.auth("commission")
    )
    assert r.json().get("entry", []) == []
    assert all(s["doctor"]["title"] == "chief" for s in await pool_slots(client, world))
    r = await client.get("/v1/availability", params=FEED, headers=world.auth("platform"))
    assert sum(i["public"] + i["pool_open"] + i["booked"] for i in r.json()["items"]) == 10  # S2's only

    after = await report_row(client, world)
    # As if S1 had never been pushed: S2's ten slots, and no booking (the one on S1 went with it).
    assert (after["offered"], after["pool_bookings"], after["cancelled"]) == (10, 0, 0)
    assert after["reserved"] == before["reserved"] - 2  # S1 held two: one reserved, one booked
    referrals = await db.run(lambda s: s.scalars(select(Referral).order_by(Referral.id)))
    assert [r.status for r in referrals] == ["cancelled"]  # kept, for the booker and the audit


async def test_commission_removes_a_session_of_its_region_only(client, world, clock, crypto):
    session_id, reference = await booked_session(client, world, clock)
    await add_wuhu_key(world, crypto, "wuhu_commission", "commission")
    r = await client.delete(
        f"/v1/sessions/{session_id}", params=REASON, headers=world.auth("wuhu_commission")
    )
    assert (r.status_code, r.json()["code"]) == (404, "session_not_found")
    r = await client.delete(f"/v1/sessions/{session_id}", params=REASON, headers=world.auth("commission"))
    assert r.status_code == 200, r.text
    assert r.json()["cancelled_referrals"] == [reference]


async def test_a_hospital_cannot_remove_another_hospitals_session(client, world, clock):
    session_id, _ = await booked_session(client, world, clock)
    r = await client.delete(
        f"/v1/hospital/sessions/{session_id}", params=REASON, headers=world.auth("district_hospital")
    )
    assert (r.status_code, r.json()["code"]) == (404, "session_not_found")
    r = await client.delete(f"/v1/sessions/{session_id}", params=REASON, headers=world.auth("city_hospital"))
    assert r.status_code == 403


async def test_removing_twice_finds_nothing_the_second_time(client, world, clock):
    session_id, _ = await booked_session(client, world, clock)
    url = f"/v1/hospital/sessions/{session_id}"
    assert (await client.delete(url, params=REASON, headers=world.auth("city_hospital"))).status_code == 200
    r = await client.delete(url, params=REASON, headers=world.auth("city_hospital"))
    assert (r.status_code, r.json()["code"]) == (404, "session_not_found")


async def test_removal_frees_the_his_session_id_for_the_corrected_push(client, world, clock):
    session_id, _ = await booked_session(client, world, clock)
    await client.delete(
        f"/v1/hospital/sessions/{session_id}", params=REASON, headers=world.auth("city_hospital")
    )
    [result] = await push(client, world, [session_item("S1", date(2026, 3, 11), slots=10)])
    assert result["result"] == "created"
    assert result["session_id"] != session_id
