"""Events for primary institutions: the family-doctor app's backend hears of its own referrals.

Everything goes through the HTTP API and a real receiver on loopback
(``tests/webhook_receiver.py``); every delivered body is verified with the independent
``standardwebhooks`` library against the institution's own secret, validated against its
schema in contracts/events/institution/, and searched for what the institution must not see.
The hospital's endpoint is served by the same dispatcher in the same passes, so the batched
leases are exercised for both kinds of recipient at once.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Iterator
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text

from service.kit.clock import ManualClock
from service.kit.config import Settings
from service.kit.crypto import Crypto
from service.kit.db import Database
from service.models.events import EVENT_TYPES, INSTITUTION_EVENT_TYPES, Event
from service.outbox.dispatcher import Dispatcher
from service.outbox.events import emit_to_institution
from service.referrals.waitlist.offers import run_waitlist_pass
from tests.factories import World, booking, pool_slots, push, session_item, sign, synthetic_id
from tests.test_attendance import after_slot, refer, report, set_city_rule
from tests.test_contracts import _validator, institution_validator
from tests.test_referral_views import counting
from tests.test_waitlist import booked_then_cancelled, enter
from tests.webhook_receiver import Receiver, verify

DAY = date(2026, 3, 10)
HIS, FD, OTHER_FD = "/his", "/family-doctor", "/other-centre"
# What an institution's event never carries: hospital-internal fields, the verification code.
HOSPITAL_ONLY_FIELDS = ("external_id", "his_reference", "diagnoses", "encounter_id", "priority", "note")


@pytest.fixture
def receiver(clock: ManualClock) -> Iterator[Receiver]:
    r = Receiver(clock)
    r.start()
    yield r
    r.stop()


@pytest.fixture
async def dispatcher(
    db: Database, clock: ManualClock, crypto: Crypto, settings: Settings
) -> AsyncIterator[Dispatcher]:
    hooks = settings.model_copy(update={"webhook_timeout_seconds": 1.0, "webhook_concurrency": 8})
    async with Dispatcher(db, clock, crypto, hooks, rng=random.Random(7)) as dispatcher:
        yield dispatcher


async def drain(dispatcher: Dispatcher) -> int:
    total = 0
    while made := await dispatcher.run_pass():
        total += made
    return total


async def register(client: Any, world: World, url: str, types: list[str], who: str) -> dict[str, Any]:
    r = await client.post(
        "/v1/webhooks/endpoints", json={"url": url, "event_types": types}, headers=world.auth(who)
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


@pytest.fixture
async def endpoints(client: Any, world: World, receiver: Receiver) -> dict[str, dict[str, Any]]:
    """The city hospital's HIS, chc_a's backend (the booker) and chc_b's, each with every type it may take."""
    return {
        HIS: await register(client, world, receiver.url + HIS, list(EVENT_TYPES), "city_hospital"),
        FD: await register(client, world, receiver.url + FD, list(INSTITUTION_EVENT_TYPES), "chc_a"),
        OTHER_FD: await register(
            client, world, receiver.url + OTHER_FD, list(INSTITUTION_EVENT_TYPES), "chc_b"
        ),
    }


def delivered(
    receiver: Receiver, endpoints: dict[str, dict[str, Any]], path: str, codes: list[str]
) -> list[Any]:
    """The bodies ``path`` received, each verified with that endpoint's secret, checked against
    its recipient's schema, and free of ID numbers, verification codes and hospital-only fields."""
    bodies = []
    for request in (r for r in receiver.requests if r.path == path):
        body = verify(request, endpoints[path]["secret"])
        text = request.body.decode()
        validator = _validator(body["type"]) if path == HIS else institution_validator(body["type"])
        errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(body)]
        assert errors == [], (path, body["type"], errors)
        for seq in range(1, 10):
            assert synthetic_id("340102", seq=seq) not in text
        if path != HIS:
            for code in codes:
                assert code not in text, "the verification code went to the institution"
            assert not [f for f in HOSPITAL_ONLY_FIELDS if f'"{f}"' in text], text
        bodies.append(body)
    return bodies


async def book_one(client: Any, world: World, seq: int = 1, day: date = DAY) -> dict[str, Any]:
    await push(client, world, [session_item("S1", day, slots=10)])
    await sign(client, world, [seq])
    slot = (await pool_slots(client, world))[0]
    r = await client.post(
        "/v1/referrals", json=booking(slot["slot_id"], seq, clock=world.clock), headers=world.auth("chc_a")
    )
    assert r.status_code == 201, r.text
    referral: dict[str, Any] = r.json()
    return referral


async def test_r13_a_hospital_withdrawal_reaches_the_booker_institution(
    client, world, receiver, dispatcher, endpoints
):
    """停诊: the hospital pushes the session as withdrawn; the family doctor's institution hears of it."""
    referral = await book_one(client, world)
    withdrawn = {
        **session_item("S1", DAY, slots=10),
        "version": 2,
        "status": "withdrawn",
        "withdrawn_reason": "专家停诊",
    }
    r = await client.post(
        "/v1/hospital/sessions", json={"sessions": [withdrawn]}, headers=world.auth("city_hospital")
    )
    assert r.status_code == 200 and r.json()["results"][0]["result"] == "withdrawn", r.text
    assert await drain(dispatcher) == 3  # booked and cancelled to the HIS, cancelled to the institution

    codes = [referral["verification_code"]]
    [told] = delivered(receiver, endpoints, FD, codes)
    assert told["type"] == "referral.cancelled" and told["version"] == 1
    data = told["data"]
    assert data["referral"] == {"reference": referral["reference"], "status": "cancelled"}
    assert data["cancellation"] == {"by": "hospital", "reason": "专家停诊"}
    assert data["hospital"]["code"] == referral["hospital"]["code"]
    assert data["referring_doctor"]["code"] == "FD-1"
    assert data["patient"]["name_masked"] == "张*"
    assert data["slot"]["starts_at"] == referral["slot"]["starts_at"]
    his = delivered(receiver, endpoints, HIS, codes)
    assert [b["type"] for b in his] == ["referral.booked", "referral.cancelled"]
    assert his[1]["data"]["cancellation"]["slot_returned_to"] is None
    # The two recipients' events are two rows, two webhook-ids; another centre hears nothing.
    assert receiver.ids(FD)[0] not in receiver.ids(HIS)
    assert receiver.ids(OTHER_FD) == []


async def test_r12_a_hotline_cancellation_reaches_the_booker_institution(
    client, world, receiver, dispatcher, endpoints
):
    referral = await book_one(client, world)
    body = {
        "reference": referral["reference"],
        "verification_code": referral["verification_code"],
        "reason": "患者来电取消",
    }
    r = await client.post("/v1/hotline/cancellations", json=body, headers=world.auth("hotline"))
    assert r.status_code == 200, r.text
    await drain(dispatcher)
    [told] = delivered(receiver, endpoints, FD, [referral["verification_code"]])
    assert (told["type"], told["data"]["cancellation"]) == (
        "referral.cancelled",
        {"by": "hotline", "reason": "患者来电取消"},
    )
    assert receiver.ids(OTHER_FD) == []


async def test_a_cancellation_writes_both_recipients_events_in_one_statement(client, world, app, db):
    """The booker as a second recipient costs no round trip: one emit statement writes both rows."""
    referral = await book_one(client, world)
    with counting(app) as statements:
        r = await client.post(
            f"/v1/referrals/{referral['reference']}/cancel",
            json={"reason": "改期"},
            headers=world.auth("chc_a"),
        )
    assert r.status_code == 200, r.text
    assert len([s for s in statements if s.lstrip().startswith("WITH emit_given")]) == 1
    rows = await db.run(
        lambda s: s.execute(
            select(Event.hospital_id, Event.recipient_id).where(Event.type == "referral.cancelled")
        )
    )
    assert sorted(rows.all()) == sorted(
        [
            (world.ids["city_hospital"], world.ids["city_hospital"]),
            (world.ids["city_hospital"], world.ids["chc_a"]),
        ]
    )


async def test_r19_receipt_and_attendance_reach_the_booker_institution(
    client, world, receiver, dispatcher, endpoints
):
    referral = await book_one(client, world)
    hospital = world.auth("city_hospital")
    r = await client.post(
        f"/v1/referrals/{referral['reference']}/receive", json={"his_reference": "HIS-77"}, headers=hospital
    )
    assert r.status_code == 200, r.text
    r = await client.post(f"/v1/referrals/{referral['reference']}/receive", json={}, headers=hospital)
    assert r.status_code == 200, r.text  # a repeat receipt tells nobody anything
    world.clock.set(datetime.fromisoformat(referral["slot"]["ends_at"]) + timedelta(hours=1))
    body = {"reports": [{"reference": referral["reference"], "outcome": "attended", "note": "门诊已就诊"}]}
    r = await client.post("/v1/hospital/attendance", json=body, headers=hospital)
    assert r.status_code == 200 and r.json()["recorded"] == 1, r.text
    await drain(dispatcher)

    told = delivered(receiver, endpoints, FD, [referral["verification_code"]])
    assert [b["type"] for b in told] == ["referral.received", "referral.attendance_recorded"]
    assert told[0]["data"]["referral"]["reference"] == referral["reference"]
    assert "HIS-77" not in json.dumps(told, ensure_ascii=False)  # the HIS's own reference stays there
    assert told[1]["data"]["attendance"]["outcome"] == "attended"
    assert told[1]["data"]["attendance"]["previous_outcome"] is None
    assert "门诊已就诊" not in json.dumps(told, ensure_ascii=False)  # the HIS's note stays there too
    assert [b["type"] for b in delivered(receiver, endpoints, HIS, [])] == [
        "referral.booked",
        "referral.attendance_recorded",
    ]


async def test_r13_a_no_show_bar_started_and_lifted_reaches_the_booker_institution(
    client, world, receiver, dispatcher, endpoints
):
    await sign(client, world, [1])
    await set_city_rule(client, world)  # 2 no-shows in 30 days bar for 10 days
    first = await refer(client, world, DAY, 1)
    second = await refer(client, world, date(2026, 3, 12), 1)
    after_slot(world, first)
    await report(client, world, (first["reference"], "no_show"))
    after_slot(world, second)
    answer = await report(client, world, (second["reference"], "no_show"))
    bar = answer["results"][0]["bar"]
    assert bar["effect"] == "started"
    r = await client.post(
        f"/v1/no-show-bars/{bar['bar_id']}/lift",
        json={"reason": "医院核实误报"},
        headers=world.auth("commission"),
    )
    assert r.status_code == 200, r.text
    await drain(dispatcher)

    codes = [first["verification_code"], second["verification_code"]]
    told = delivered(receiver, endpoints, FD, codes)
    assert [b["type"] for b in told] == [
        "referral.attendance_recorded",
        "referral.attendance_recorded",
        "no_show_bar.started",
        "no_show_bar.lifted",
    ]
    started, lifted = told[2]["data"], told[3]["data"]
    assert started["references"] == [first["reference"], second["reference"]]
    assert started["bar"] == {"starts_on": bar["starts_on"], "ends_on": bar["ends_on"]}
    assert started["hospital"]["code"] == first["hospital"]["code"]
    assert lifted["lifted_by"] == "commission"
    assert "医院核实误报" not in json.dumps(
        told, ensure_ascii=False
    )  # the commission's words stay in its audit
    assert receiver.ids(OTHER_FD) == []


async def test_endpoints_are_scoped_to_their_organisation_and_typed_by_its_role(
    client, world, receiver, endpoints
):
    mine = f"/v1/webhooks/endpoints/{endpoints[FD]['id']}"
    assert (await client.get(mine, headers=world.auth("chc_a"))).status_code == 200
    for other in ("chc_b", "city_hospital"):
        r = await client.get(mine, headers=world.auth(other))
        assert r.status_code == 404 and r.json()["code"] == "webhook_endpoint_not_found", other
        assert (await client.post(mine + "/test", headers=world.auth(other))).status_code == 404
    his = f"/v1/webhooks/endpoints/{endpoints[HIS]['id']}"
    assert (await client.delete(his, headers=world.auth("chc_a"))).status_code == 404
    listed = (await client.get("/v1/webhooks/endpoints", headers=world.auth("chc_a"))).json()["items"]
    assert [e["id"] for e in listed] == [endpoints[FD]["id"]]

    # Each role subscribes to its own types only.
    for who, types in (
        ("chc_a", ["slots.returned"]),
        ("chc_a", ["referral.booked"]),
        ("city_hospital", ["no_show_bar.started"]),
    ):
        r = await client.post(
            "/v1/webhooks/endpoints",
            json={"url": receiver.url, "event_types": types},
            headers=world.auth(who),
        )
        assert r.status_code == 422 and r.json()["code"] == "webhook_event_type_not_offered", (
            who,
            types,
            r.text,
        )
    r = await client.patch(mine, json={"event_types": ["access.revoked"]}, headers=world.auth("chc_a"))
    assert r.status_code == 422 and r.json()["code"] == "webhook_event_type_not_offered"
    # The same SSRF rules: a private address is refused for an institution as for a hospital.
    r = await client.post(
        "/v1/webhooks/endpoints",
        json={"url": "https://10.0.0.1/hook", "event_types": ["referral.cancelled"]},
        headers=world.auth("chc_a"),
    )
    assert r.status_code == 422 and r.json()["code"] == "webhook_url_refused", r.text


async def test_an_institutions_test_event_is_signed_and_in_its_own_schema(client, world, receiver, endpoints):
    r = await client.post(f"/v1/webhooks/endpoints/{endpoints[FD]['id']}/test", headers=world.auth("chc_a"))
    assert r.status_code == 200 and r.json()["delivered"] is True, r.text
    [body] = delivered(receiver, endpoints, FD, [])
    assert body["type"] == "webhook.test"
    assert body["data"]["event_types"] == sorted(INSTITUTION_EVENT_TYPES)


async def test_an_institutions_dead_letter_is_listed_and_replayed_by_it_alone(
    client, world, receiver, dispatcher, endpoints, db
):
    referral = await book_one(client, world)
    r = await client.post(
        f"/v1/referrals/{referral['reference']}/cancel", json={"reason": "改期"}, headers=world.auth("chc_a")
    )
    assert r.status_code == 200, r.text
    receiver.answer = 500
    await drain(dispatcher)
    # Eleven failed attempts over four days make it dead (tests/test_webhooks.py walks them); here
    # it is declared dead, to see who may list and replay it.
    await db.run(
        lambda s: s.execute(
            text("UPDATE webhook_deliveries SET status = 'dead', dead_at = now() WHERE endpoint_id = :e"),
            {"e": endpoints[FD]["id"]},
        )
    )
    dead = (await client.get("/v1/webhooks/deliveries", headers=world.auth("chc_a"))).json()["items"]
    assert [d["event_type"] for d in dead] == ["referral.cancelled"]
    assert (await client.get("/v1/webhooks/deliveries", headers=world.auth("chc_b"))).json()["items"] == []
    r = await client.post(
        f"/v1/webhooks/deliveries/{dead[0]['id']}/replay", headers=world.auth("city_hospital")
    )
    assert r.status_code == 404 and r.json()["code"] == "webhook_delivery_not_found"
    r = await client.post(f"/v1/webhooks/deliveries/{dead[0]['id']}/replay", headers=world.auth("chc_a"))
    assert r.status_code == 202, r.text
    receiver.answer = 200
    failed = len(receiver.ids(FD))
    await drain(dispatcher)
    assert receiver.ids(FD)[failed:] == [dead[0]["webhook_id"]]


async def test_emit_to_institution_writes_its_event_alone_and_refuses_a_hospitals_type(world, db):
    """The one entry point other features use to tell an institution something."""
    at = world.clock.now()
    data = {"hospital": {"code": "H"}, "references": []}
    emitted = await db.run(
        lambda s: emit_to_institution(
            session=s, institution_id=world.ids["chc_a"], hospital_id=world.ids["city_hospital"],
            event_type="no_show_bar.lifted", data=data, at=at,
        )
    )  # fmt: skip
    [row] = await db.run(lambda s: s.scalars(select(Event)))
    assert (row.hospital_id, row.recipient_id, row.webhook_id) == (
        world.ids["city_hospital"],
        world.ids["chc_a"],
        emitted.webhook_id,
    )
    assert row.payload["version"] == 1 and row.payload["data"] == data
    with pytest.raises(ValueError, match="not an event for primary institutions"):
        await db.run(
            lambda s: emit_to_institution(
                session=s, institution_id=world.ids["chc_a"], hospital_id=world.ids["city_hospital"],
                event_type="slots.returned", data={}, at=at,  # type: ignore[arg-type]
            )
        )  # fmt: skip


async def test_an_institutions_receiver_answering_410_disables_its_endpoint_alone(
    client, world, receiver, dispatcher, endpoints, db
):
    from service.models.audit import AuditEntry

    referral = await book_one(client, world)
    r = await client.post(
        f"/v1/referrals/{referral['reference']}/cancel", json={"reason": "改期"}, headers=world.auth("chc_a")
    )
    assert r.status_code == 200, r.text
    receiver.on_request = lambda: setattr(
        receiver, "answer", 410 if receiver.requests[-1].path == FD else 200
    )
    await drain(dispatcher)
    mine = (
        await client.get(f"/v1/webhooks/endpoints/{endpoints[FD]['id']}", headers=world.auth("chc_a"))
    ).json()
    his = (
        await client.get(
            f"/v1/webhooks/endpoints/{endpoints[HIS]['id']}", headers=world.auth("city_hospital")
        )
    ).json()
    assert (mine["status"], his["status"]) == ("disabled", "active")
    [entry] = await db.run(
        lambda s: s.scalars(select(AuditEntry).where(AuditEntry.action == "webhook.endpoint_disabled"))
    )
    assert entry.hospital_id is None  # an institution's endpoint is no hospital's business
    assert entry.detail["organisation_id"] == world.ids["chc_a"]


async def test_a_waiting_list_offer_reaches_the_institution_and_its_accept_books(
    client, world, db, receiver, dispatcher, endpoints
):
    """Cancellation → offer → `waitlist.offered` at the waiting resident's institution, signed
    and in its schema with no ID number → accept → a referral on the offered slot."""
    await push(client, world, [session_item("S1", DAY, slots=10)])
    await sign(client, world, [1, 2])
    slot = (await pool_slots(client, world))[0]
    entry = (await enter(client, world, 2, slot["department"]["id"])).json()
    cancelled = await booked_then_cancelled(client, world, slot["slot_id"], 1)
    await drain(dispatcher)

    bodies = delivered(receiver, endpoints, FD, [cancelled["verification_code"]])
    offered = [b for b in bodies if b["type"] == "waitlist.offered"]
    assert len(offered) == 1, [b["type"] for b in bodies]
    data = offered[0]["data"]
    assert data["entry"]["reference"] == entry["reference"]
    assert (data["slot"]["number"], data["patient"]["name_masked"]) == (slot["number"], "张*")
    # The offer is the institution's alone: neither the hospital nor another centre hears of it.
    assert not [b for b in delivered(receiver, endpoints, HIS, []) if b["type"] == "waitlist.offered"]
    assert delivered(receiver, endpoints, OTHER_FD, []) == []

    r = await client.post(
        f"/v1/waitlist/offers/{data['offer']['reference']}/accept", headers=world.auth("chc_a")
    )
    assert r.status_code == 201, r.text
    assert (r.json()["slot"]["id"], r.json()["status"]) == (slot["slot_id"], "booked")


async def test_an_expired_offer_goes_to_the_next_in_line_and_its_event_follows(
    client, world, db, crypto, receiver, dispatcher, endpoints
):
    """Offer → expiry → the next entry's offer, each announced to the institution; at the last
    expiry nobody waits and no event is sent."""
    await push(client, world, [session_item("S1", DAY, slots=10)])
    await sign(client, world, [1, 2, 3])
    slot = (await pool_slots(client, world))[0]
    first = (await enter(client, world, 2, slot["department"]["id"])).json()
    world.clock.advance(timedelta(minutes=1))
    second = (await enter(client, world, 3, slot["department"]["id"])).json()
    cancelled = await booked_then_cancelled(client, world, slot["slot_id"], 1)
    world.clock.advance(timedelta(minutes=10))
    assert await run_waitlist_pass(db, world.clock, crypto) == 1
    await drain(dispatcher)

    offered = [
        b["data"]
        for b in delivered(receiver, endpoints, FD, [cancelled["verification_code"]])
        if b["type"] == "waitlist.offered"
    ]
    assert [o["entry"]["reference"] for o in offered] == [first["reference"], second["reference"]]
    assert offered[0]["offer"]["reference"] != offered[1]["offer"]["reference"]
    world.clock.advance(timedelta(minutes=10))
    assert await run_waitlist_pass(db, world.clock, crypto) == 1
    await drain(dispatcher)
    assert len([b for b in delivered(receiver, endpoints, FD, []) if b["type"] == "waitlist.offered"]) == 2
