"""The commission suspends, revokes and reinstates access (R14): immediate, reasoned, reversible."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import select

from service.kit.clock import local_datetime
from service.models.audit import AuditEntry
from service.models.events import Event
from service.models.supervision import AccessSuspension
from tests.factories import (
    add_wuhu_key,
    booked_referral,
    booking,
    pool_slots,
    push,
    session_item,
    sign,
    synthetic_id,
)
from tests.test_attendance import refer
from tests.test_contracts import _validator

DAY = date(2026, 3, 10)  # pool window: 2 March 08:00 to 3 March 08:00; the clock starts 2 March 09:00
EVENTS = Path(__file__).resolve().parent.parent / "contracts" / "events"
URL = "/v1/supervision/suspensions"


@pytest.fixture
async def referral(client, world) -> dict[str, Any]:
    return await booked_referral(client, world, DAY, [1, 2, 3])


async def client_id(client, world, who: str) -> int:
    r = await client.get("/v1/me", headers=world.auth(who))
    assert r.status_code == 200, r.text
    value: int = r.json()["client_id"]
    return value


async def suspend(client, world, who: str = "commission", **body: Any) -> Any:
    payload = {"mode": "revoked", "reason": "倒卖号源 (R14)", **body}
    return await client.post(URL, json=payload, headers=world.auth(who))


async def audit(db, action: str) -> list[AuditEntry]:
    rows = await db.run(
        lambda s: s.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id))
    )
    return list(rows)


# --- taking effect on the very next request ---------------------------------------------------


async def test_r14_revoked_institution_is_refused_on_the_very_next_request(client, world, db):
    assert (await client.get("/v1/me", headers=world.auth("chc_a"))).status_code == 200
    r = await suspend(client, world, subject_type="institution", organisation_code="P-A")
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["subject_type"], body["subject_id"], body["mode"]) == (
        "institution",
        world.ids["chc_a"],
        "revoked",
    )
    assert body["in_force"] is True
    assert body["organisation"]["code"] == "P-A"

    r = await client.get("/v1/me", headers=world.auth("chc_a"))
    assert r.status_code == 403
    assert r.json()["code"] == "institution_suspended"
    assert r.json()["mode"] == "revoked"
    r = await client.get("/v1/pool/slots", headers=world.auth("chc_a"))
    assert r.json()["code"] == "institution_suspended"
    # Another institution is untouched.
    assert (await client.get("/v1/me", headers=world.auth("chc_b"))).status_code == 200
    [entry] = await audit(db, "access.revoked")
    assert entry.reason == "倒卖号源 (R14)"
    assert entry.actor_org_id == world.ids["commission"]
    assert entry.detail["subject_id"] == world.ids["chc_a"]


async def test_r14_suspended_api_client_is_refused_and_its_siblings_are_not(client, world):
    # district_hospital holds two clients: its HIS and its booking client (R3).
    booker = await client_id(client, world, "district_as_booker")
    r = await suspend(client, world, subject_type="api_client", subject_id=booker, mode="suspended")
    assert r.status_code == 201, r.text
    r = await client.get("/v1/me", headers=world.auth("district_as_booker"))
    assert r.status_code == 403
    assert r.json()["code"] == "client_suspended"
    assert (await client.get("/v1/me", headers=world.auth("district_hospital"))).status_code == 200


async def test_r14_reinstating_serves_the_next_request_again(client, world, db):
    r = await suspend(client, world, subject_type="institution", organisation_code="P-A")
    suspension_id = r.json()["id"]
    assert (await client.get("/v1/me", headers=world.auth("chc_a"))).status_code == 403
    r = await client.post(
        f"{URL}/{suspension_id}/reinstate", json={"reason": "调查结束"}, headers=world.auth("commission")
    )
    assert r.status_code == 200, r.text
    assert r.json()["in_force"] is False
    assert r.json()["reinstate_reason"] == "调查结束"
    assert r.json()["reinstated_by_client_id"] == await client_id(client, world, "commission")
    assert (await client.get("/v1/me", headers=world.auth("chc_a"))).status_code == 200
    [entry] = await audit(db, "access.reinstated")
    assert (entry.reason, entry.detail["suspension_id"]) == ("调查结束", suspension_id)
    r = await client.post(
        f"{URL}/{suspension_id}/reinstate", json={"reason": "again"}, headers=world.auth("commission")
    )
    assert r.status_code == 409
    assert r.json()["code"] == "already_reinstated"
    # Ended, the subject can be acted on again.
    r = await suspend(client, world, subject_type="institution", subject_id=world.ids["chc_a"])
    assert r.status_code == 201, r.text


async def test_r14_every_action_needs_a_reason(client, world):
    r = await client.post(
        URL,
        json={"subject_type": "institution", "organisation_code": "P-A", "mode": "revoked"},
        headers=world.auth("commission"),
    )
    assert r.status_code == 422
    r = await suspend(client, world, subject_type="institution", organisation_code="P-A", reason="")
    assert r.status_code == 422
    suspension_id = (
        await suspend(client, world, subject_type="institution", organisation_code="P-A")
    ).json()["id"]
    r = await client.post(f"{URL}/{suspension_id}/reinstate", json={}, headers=world.auth("commission"))
    assert r.status_code == 422
    assert (await client.get("/v1/me", headers=world.auth("chc_a"))).status_code == 403


async def test_r14_one_action_in_force_per_subject(client, world, db):
    first = await suspend(client, world, subject_type="institution", organisation_code="P-A")
    r = await suspend(client, world, subject_type="institution", organisation_code="P-A", mode="suspended")
    assert r.status_code == 409
    assert r.json()["code"] == "already_suspended"
    assert r.json()["suspension_id"] == first.json()["id"]
    rows = await db.run(lambda s: s.scalars(select(AccessSuspension).order_by(AccessSuspension.id)))
    assert len(list(rows)) == 1


async def test_r14_a_suspension_with_an_end_lapses_by_itself(client, world, clock, db):
    until = clock.now() + timedelta(days=3)
    r = await suspend(
        client,
        world,
        subject_type="institution",
        organisation_code="P-A",
        mode="suspended",
        until=until.isoformat(),
    )
    assert r.status_code == 201, r.text
    clock.advance(timedelta(days=3) - timedelta(seconds=1))
    r = await client.get("/v1/me", headers=world.auth("chc_a"))
    assert (r.status_code, r.json()["code"]) == (403, "institution_suspended")
    assert datetime.fromisoformat(r.json()["until"]) == until
    clock.advance(timedelta(seconds=1))
    assert (await client.get("/v1/me", headers=world.auth("chc_a"))).status_code == 200
    # A new action closes the lapsed one at its end and opens.
    r = await suspend(client, world, subject_type="institution", organisation_code="P-A")
    assert r.status_code == 201, r.text
    lapsed = await db.run(lambda s: s.scalar(select(AccessSuspension).order_by(AccessSuspension.id)))
    assert (lapsed.reinstated_at, lapsed.reinstate_reason, lapsed.reinstated_by_client_id) == (
        until,
        "lapsed",
        None,
    )


@pytest.mark.parametrize(
    "body",
    [
        {"subject_type": "institution", "organisation_code": "P-A", "mode": "revoked", "until": "2026-04-01T00:00:00+08:00"},
        {"subject_type": "institution", "organisation_code": "P-A", "subject_id": 1},
        {"subject_type": "institution"},
        {"subject_type": "doctor", "organisation_code": "P-A"},
        {"subject_type": "api_client", "organisation_code": "P-A"},
        {"subject_type": "institution", "organisation_code": "P-A", "mode": "banned"},
    ],
)  # fmt: skip
async def test_r14_malformed_actions_are_422(client, world, body):
    r = await client.post(
        URL, json={"mode": "suspended", "reason": "x", **body}, headers=world.auth("commission")
    )
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_request"


async def test_r14_an_end_in_the_past_is_refused(client, world, clock):
    r = await suspend(
        client,
        world,
        subject_type="institution",
        organisation_code="P-A",
        mode="suspended",
        until=(clock.now() - timedelta(minutes=1)).isoformat(),
    )
    assert r.status_code == 422
    assert r.json()["code"] == "until_in_past"


# --- family doctors ---------------------------------------------------------------------------


async def test_r14_suspended_doctor_cannot_book_but_a_colleague_can(client, world, clock, db):
    await push(client, world, [session_item("S1", DAY, slots=10)])
    await sign(client, world, [1])
    await sign(client, world, [2], doctor_code="FD-2")
    r = await suspend(
        client, world, subject_type="doctor", organisation_code="P-A", doctor_code="FD-1", mode="suspended"
    )
    assert r.status_code == 201, r.text
    assert r.json()["subject"].startswith("FD-1")
    # The institution's own client is still served: only the doctor is refused.
    slots = await pool_slots(client, world)
    r = await client.post(
        "/v1/referrals", json=booking(slots[0]["slot_id"], 1, clock=clock), headers=world.auth("chc_a")
    )
    assert r.status_code == 403
    assert r.json()["code"] == "doctor_suspended"
    [refusal] = await audit(db, "referral.refused")
    assert refusal.code == "doctor_suspended"
    r = await client.post(
        "/v1/referrals",
        json=booking(slots[0]["slot_id"], 2, clock=clock, doctor_code="FD-2"),
        headers=world.auth("chc_a"),
    )
    assert r.status_code == 201, r.text


async def test_r14_a_suspended_doctors_patient_can_still_cancel(client, world, referral):
    r = await suspend(client, world, subject_type="doctor", organisation_code="P-A", doctor_code="FD-1")
    assert r.status_code == 201
    r = await client.post(
        f"/v1/referrals/{referral['reference']}/cancel",
        json={"reason": "患者改期"},
        headers=world.auth("chc_a"),
    )
    assert r.status_code == 200, r.text


# --- referrals already booked -----------------------------------------------------------------


async def test_r14_referrals_booked_before_stay_valid(client, world, referral, db):
    r = await suspend(client, world, subject_type="institution", organisation_code="P-A")
    assert r.json()["cancelled_references"] == []
    r = await client.get(f"/v1/referrals/{referral['reference']}", headers=world.auth("city_hospital"))
    assert r.status_code == 200
    assert r.json()["status"] == "booked"
    events = await db.run(
        lambda s: s.scalars(
            select(Event.type).where(Event.recipient_id == Event.hospital_id).order_by(Event.id)
        )
    )
    assert list(events) == ["referral.booked", "access.revoked"]


async def test_r14_the_commission_may_cancel_active_referrals_like_any_cancellation(
    client, world, referral, clock, db
):
    # A referral whose slot already started is history, not an active booking: it is kept.
    early = session_item("S0", date(2026, 3, 3), slots=4, public_at=local_datetime(date(2026, 3, 3), 8))
    await push(client, world, [early])
    past = await pool_slots(client, world, service_date="2026-03-03")
    r = await client.post(
        "/v1/referrals", json=booking(past[0]["slot_id"], 2, clock=clock), headers=world.auth("chc_a")
    )
    assert r.status_code == 201, r.text
    started = r.json()
    clock.set(clock.now() + timedelta(days=1))  # 3 March 09:00: the 08:00 slot has started
    r = await suspend(
        client,
        world,
        subject_type="institution",
        organisation_code="P-A",
        cancel_active_referrals=True,
    )
    assert r.status_code == 201, r.text
    assert r.json()["cancelled_references"] == [referral["reference"]]

    r = await client.get(f"/v1/referrals/{referral['reference']}", headers=world.auth("city_hospital"))
    assert (r.json()["status"], r.json()["cancelled_by"]) == ("cancelled", "commission")
    r = await client.get(f"/v1/referrals/{started['reference']}", headers=world.auth("city_hospital"))
    assert r.json()["status"] == "booked"
    # 3 March 09:00 is past the public release of 10 March's slots: the slot goes to the public.
    [event] = [
        e.payload
        for e in await db.run(
            lambda s: s.scalars(
                select(Event)
                .where(Event.recipient_id == Event.hospital_id)
                .where(Event.type == "referral.cancelled")
                .order_by(Event.id)
            )
        )
    ]
    assert event["data"]["cancellation"]["by"] == "commission"
    assert event["data"]["cancellation"]["slot_returned_to"] == "public"
    assert "倒卖" not in json.dumps(event, ensure_ascii=False)  # the commission's reason stays in the audit
    schema = json.loads((EVENTS / f"referral.cancelled.v{event['version']}.schema.json").read_text())
    Draft202012Validator(schema).validate(event)
    returned = await db.run(
        lambda s: s.scalars(select(Event).where(Event.type == "slots.returned").order_by(Event.id))
    )
    assert [e.payload["data"]["slots"][0]["number"] for e in returned] == [referral["slot"]["number"]]
    [cancelled] = await audit(db, "referral.cancelled")
    assert (cancelled.referral_id is not None, cancelled.detail["by"]) == (True, "commission")
    [revoked] = await audit(db, "access.revoked")
    assert revoked.detail["cancelled_references"] == [referral["reference"]]


async def test_r14_cancelled_slots_go_back_to_the_pool_while_its_window_is_open(client, world, referral):
    r = await suspend(
        client,
        world,
        subject_type="doctor",
        organisation_code="P-A",
        doctor_code="FD-1",
        cancel_active_referrals=True,
    )
    assert r.status_code == 201, r.text
    assert referral["slot"]["id"] in {s["slot_id"] for s in await pool_slots(client, world, who="chc_b")}


# --- scope and listing ------------------------------------------------------------------------


async def test_r14_only_subjects_of_the_commissions_region(client, world, db, crypto, clock):
    await add_wuhu_key(world, crypto, "wuhu_commission", "commission")
    r = await suspend(
        client, world, who="wuhu_commission", subject_type="institution", organisation_code="P-A"
    )
    assert r.status_code == 404
    assert r.json()["code"] == "subject_not_found"
    assert (await client.get("/v1/me", headers=world.auth("chc_a"))).status_code == 200
    r = await suspend(
        client, world, who="wuhu_commission", subject_type="institution", organisation_code="P-FAR"
    )
    assert r.status_code == 201, r.text
    far_id = r.json()["id"]
    own = (await suspend(client, world, subject_type="institution", organisation_code="P-A")).json()["id"]
    r = await client.get(URL, headers=world.auth("wuhu_commission"))
    assert [s["id"] for s in r.json()["items"]] == [far_id]
    r = await client.post(
        f"{URL}/{own}/reinstate", json={"reason": "x"}, headers=world.auth("wuhu_commission")
    )
    assert r.status_code == 404
    assert r.json()["code"] == "suspension_not_found"
    # The province's commission covers both.
    r = await client.get(URL, headers=world.auth("commission"))
    assert [s["id"] for s in r.json()["items"]] == [own, far_id]


async def test_r14_a_commission_cannot_lock_itself_out(client, world):
    r = await suspend(client, world, subject_type="institution", organisation_code="A-COMM")
    assert r.status_code == 422
    assert r.json()["code"] == "own_organisation"


async def test_r14_only_the_commission_acts(client, world):
    r = await suspend(client, world, who="city_hospital", subject_type="institution", organisation_code="P-A")
    assert r.status_code == 403
    assert r.json()["code"] == "wrong_role"


async def test_r14_list_filters_and_pages(client, world):
    ids = []
    for code in ("P-A", "P-B", "P-FAR"):
        r = await suspend(client, world, subject_type="institution", organisation_code=code)
        ids.append(r.json()["id"])
    r = await client.post(f"{URL}/{ids[0]}/reinstate", json={"reason": "x"}, headers=world.auth("commission"))
    assert r.status_code == 200
    seen, cursor = [], None
    while True:
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(URL, params=params, headers=world.auth("commission"))).json()
        seen += [s["id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    r = await client.get(URL, params={"active": "true"}, headers=world.auth("commission"))
    assert [s["id"] for s in r.json()["items"]] == ids[:0:-1]
    r = await client.get(URL, params={"active": "false"}, headers=world.auth("commission"))
    assert [s["id"] for s in r.json()["items"]] == [ids[0]]
    r = await client.get(
        URL,
        params={"organisation_id": world.ids["chc_b"], "subject_type": "institution"},
        headers=world.auth("commission"),
    )
    assert [s["id"] for s in r.json()["items"]] == [ids[1]]


# --- telling hospitals: access.revoked and access.reinstated ------------------------------------


async def access_events(db) -> list[Event]:
    rows = await db.run(
        lambda s: s.scalars(select(Event).where(Event.type.startswith("access.")).order_by(Event.id))
    )
    return list(rows)


def check_event(event: Event) -> dict[str, Any]:
    """Valid against its schema and free of resident data; its data."""
    assert list(_validator(event.type).iter_errors(event.payload)) == []
    text = json.dumps(event.payload, ensure_ascii=False)
    for seq in range(1, 10):
        assert synthetic_id("340102", seq=seq)[:17] not in text, text
        assert f"张{seq}" not in text, text
    assert "倒卖" not in text and "调查" not in text, text  # the commission's reasons stay in the audit
    data: dict[str, Any] = event.payload["data"]
    return data


async def test_r14_each_hospital_holding_active_referrals_hears_of_a_revocation_with_its_own(
    client, world, clock, db
):
    await sign(client, world, [1, 2, 3, 4])
    city = [await refer(client, world, DAY, 1), await refer(client, world, date(2026, 3, 12), 2)]
    district = await refer(client, world, DAY, 3, hospital="district_hospital")
    gone = await refer(client, world, date(2026, 3, 12), 4)
    r = await client.post(
        f"/v1/referrals/{gone['reference']}/cancel", json={"reason": "改期"}, headers=world.auth("chc_a")
    )
    assert r.status_code == 200, r.text
    clock.set(local_datetime(date(2026, 3, 9), 9))
    r = await suspend(client, world, subject_type="institution", organisation_code="P-A")
    assert r.status_code == 201, r.text

    events = await access_events(db)
    assert [(e.type, e.hospital_id) for e in events] == [
        ("access.revoked", world.ids["city_hospital"]),
        ("access.revoked", world.ids["district_hospital"]),
    ]  # one each; the provincial hospital holds none and hears nothing
    city_data, district_data = (check_event(e) for e in events)
    assert city_data["references"] == [ref["reference"] for ref in city]
    assert district_data["references"] == [district["reference"]]
    assert city_data["subject"] == {
        "type": "institution",
        "institution": {"code": "P-A", "name": "瑶海区明光路社区卫生服务中心"},
        "doctor": None,
        "api_client": None,
    }
    assert (city_data["mode"], city_data["until"], city_data["cancel_active_referrals"]) == (
        "revoked",
        None,
        False,
    )
    assert city_data["reason"] == "转诊方的平台访问权限已被卫生健康委撤销"
    assert events[0].created_at == clock.now()


async def test_r14_a_suspension_that_cancels_tells_first_then_cancels(client, world, clock, referral, db):
    until = clock.now() + timedelta(days=5)
    r = await suspend(
        client,
        world,
        subject_type="doctor",
        organisation_code="P-A",
        doctor_code="FD-1",
        mode="suspended",
        until=until.isoformat(),
        cancel_active_referrals=True,
    )
    assert r.status_code == 201, r.text
    rows = await db.run(
        lambda s: s.scalars(select(Event).where(Event.recipient_id == Event.hospital_id).order_by(Event.id))
    )
    events = list(rows)
    assert [e.type for e in events] == ["referral.booked", "access.revoked", "referral.cancelled"]
    data = check_event(events[1])
    assert data["subject"]["type"] == "doctor"
    assert data["subject"]["doctor"] == {"code": "FD-1", "name": "李家庭"}
    assert datetime.fromisoformat(data["until"]) == until
    assert (data["mode"], data["cancel_active_referrals"]) == ("suspended", True)
    assert data["references"] == [referral["reference"]]
    # The same fixed text as the cancellation the hospital receives right after it.
    assert data["reason"] == events[2].payload["data"]["cancellation"]["reason"]

    # Reinstating: the referral is cancelled, so no hospital holds an active one and none is told.
    suspension_id = r.json()["id"]
    r = await client.post(
        f"{URL}/{suspension_id}/reinstate", json={"reason": "调查结束"}, headers=world.auth("commission")
    )
    assert r.status_code == 200, r.text
    assert [e.type for e in await access_events(db)] == ["access.revoked"]


async def test_r14_no_active_referrals_means_no_event(client, world, clock, referral, db):
    # chc_b booked nothing; chc_a's only referral has started by the time chc_a is suspended.
    r = await suspend(client, world, subject_type="institution", organisation_code="P-B")
    assert r.status_code == 201, r.text
    clock.set(datetime.fromisoformat(referral["slot"]["starts_at"]))
    r = await suspend(client, world, subject_type="institution", organisation_code="P-A")
    assert r.status_code == 201, r.text
    r = await client.post(
        f"{URL}/{r.json()['id']}/reinstate", json={"reason": "调查结束"}, headers=world.auth("commission")
    )
    assert r.status_code == 200, r.text
    assert await access_events(db) == []


async def test_r14_reinstating_tells_the_hospitals_holding_active_referrals(
    client, world, clock, referral, db
):
    chc_client = await client_id(client, world, "chc_a")
    r = await suspend(client, world, subject_type="api_client", subject_id=chc_client, mode="suspended")
    assert r.status_code == 201, r.text
    clock.advance(timedelta(hours=1))
    r = await client.post(
        f"{URL}/{r.json()['id']}/reinstate", json={"reason": "调查结束"}, headers=world.auth("commission")
    )
    assert r.status_code == 200, r.text
    revoked, reinstated = await access_events(db)
    assert (revoked.type, reinstated.type) == ("access.revoked", "access.reinstated")
    assert reinstated.hospital_id == world.ids["city_hospital"]
    assert reinstated.created_at == clock.now()
    data = check_event(reinstated)
    assert data == {
        "subject": {
            "type": "api_client",
            "institution": {"code": "P-A", "name": "瑶海区明光路社区卫生服务中心"},
            "doctor": None,
            "api_client": "chc_a",
        },
        "mode": "suspended",
        "reason": "转诊方的平台访问权限已被卫生健康委恢复",
        "references": [referral["reference"]],
    }
    assert check_event(revoked)["subject"] == data["subject"]
