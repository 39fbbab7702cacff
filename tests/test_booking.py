"""Family doctors book reserved slots for signed residents (R3, R5–R11, R17)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import select

from service.kit.clock import SHANGHAI
from service.models.audit import AuditEntry
from service.models.events import Event
from tests.factories import (
    add_alliance,
    booking,
    pool_slots,
    post_referral,
    push,
    session_item,
    sign,
    synthetic_id,
)

DAY = date(2026, 3, 10)


@pytest.fixture
async def open_pool(client, world):
    """One session of 10 slots at the city hospital (2 reserved) and 5 signed residents of chc_a."""
    await push(client, world, [session_item("S1", DAY, slots=10)])
    await sign(client, world, [1, 2, 3, 4, 5])
    return await pool_slots(client, world)


async def test_r8_books_for_a_signed_resident(client, world, clock, open_pool, db):
    r = await post_referral(client, world, booking(open_pool[0]["slot_id"], 1, clock=clock))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["resident_id_masked"] == "3****************" + synthetic_id("340102", seq=1)[-1]
    assert body["resident_name_masked"] == "张*"
    assert r.headers["location"] == f"/v1/referrals/{body['reference']}"
    assert await pool_slots(client, world) == open_pool[1:]

    events = list(
        await db.run(
            lambda s: s.scalars(
                select(Event).where(Event.recipient_id == Event.hospital_id).order_by(Event.id)
            )
        )
    )
    assert [e.type for e in events] == ["referral.booked"]
    assert events[0].hospital_id == world.ids["city_hospital"]


async def test_r8_unsigned_resident_is_refused_and_recorded(client, world, clock, open_pool, db):
    r = await post_referral(client, world, booking(open_pool[0]["slot_id"], 99, clock=clock))
    assert r.status_code == 422
    assert r.json()["code"] == "not_signed"
    assert r.headers["content-type"].startswith("application/problem+json")
    entries = list(
        await db.run(
            lambda s: s.scalars(
                select(AuditEntry).where(AuditEntry.action == "referral.refused").order_by(AuditEntry.id)
            )
        )
    )
    assert [(e.code, e.actor_org_id) for e in entries] == [("not_signed", world.ids["chc_a"])]
    assert await pool_slots(client, world) == open_pool  # nothing half-written


async def test_r8_expired_contract_is_refused(client, world, clock, open_pool):
    await sign(client, world, [7], ends_on=date(2026, 3, 1))
    r = await post_referral(client, world, booking(open_pool[0]["slot_id"], 7, clock=clock))
    assert r.json()["code"] == "not_signed"


async def test_r8_resident_of_another_family_doctor_is_refused(client, world, clock, open_pool):
    await sign(client, world, [8], doctor_code="FD-2")
    r = await post_referral(client, world, booking(open_pool[0]["slot_id"], 8, clock=clock))
    assert r.json()["code"] == "not_signed"


async def test_r8_real_name_must_match(client, world, clock, open_pool):
    r = await post_referral(client, world, booking(open_pool[0]["slot_id"], 1, clock=clock, name="李四"))
    assert r.status_code == 422
    assert r.json()["code"] == "name_mismatch"


async def test_r8_invalid_id_number_is_refused(client, world, clock, open_pool):
    payload = booking(open_pool[0]["slot_id"], 1, clock=clock)
    payload["resident"]["id_number"] = payload["resident"]["id_number"][:-1] + "0"
    if payload["resident"]["id_number"] == synthetic_id("340102", seq=1):
        payload["resident"]["id_number"] = payload["resident"]["id_number"][:-1] + "1"
    r = await post_referral(client, world, payload)
    assert r.json()["code"] == "invalid_id_number"


async def test_r9_no_referral_without_a_recent_consultation(client, world, clock, open_pool):
    stale = clock.now() - timedelta(hours=73)
    r = await post_referral(
        client, world, booking(open_pool[0]["slot_id"], 1, clock=clock, encountered_at=stale)
    )
    assert r.json()["code"] == "consultation_out_of_window"
    future = clock.now() + timedelta(minutes=5)
    r = await post_referral(
        client, world, booking(open_pool[0]["slot_id"], 1, clock=clock, encountered_at=future)
    )
    assert r.json()["code"] == "consultation_out_of_window"


async def test_r10_diagnosis_must_be_on_the_disease_list(client, world, clock, open_pool):
    r = await post_referral(
        client, world, booking(open_pool[0]["slot_id"], 1, clock=clock, diagnoses=["J45"])
    )
    assert r.status_code == 422
    assert r.json()["code"] == "disease_not_covered"
    r = await post_referral(
        client, world, booking(open_pool[0]["slot_id"], 1, clock=clock, diagnoses=["J45", "E11.9"])
    )
    assert r.status_code == 201


async def test_r10_malformed_icd10_is_a_schema_error(client, world, clock, open_pool):
    r = await post_referral(
        client, world, booking(open_pool[0]["slot_id"], 1, clock=clock, diagnoses=["hypertension"])
    )
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_request"


async def test_r5_window_not_open_before_pool_opens_at(client, world, clock):
    later = DAY + timedelta(days=2)  # public 5 March 08:00, pool opens 4 March 08:00
    [result] = await push(client, world, [session_item("S9", later, slots=10)])
    await sign(client, world, [1])
    r = await client.get("/v1/pool/slots", headers=world.auth("chc_a"))
    assert r.json()["items"] == []  # not yet bookable, so not listed
    from tests.factories import to_local

    assert to_local(result["pool_opens_at"]) == to_local(result["public_at"]) - timedelta(days=1)
    slot_id = await slot_id_of(world, later, result["pool_slot_numbers"][0])
    r = await post_referral(client, world, booking(slot_id, 1, clock=clock))
    assert r.status_code == 409
    assert r.json()["code"] == "window_not_open"
    clock.set(to_local(result["pool_opens_at"]))
    r = await post_referral(client, world, booking(slot_id, 1, clock=clock))
    assert r.status_code == 201, r.text


async def test_r6_window_closes_at_public_at_even_before_the_loop_runs(client, world, clock, open_pool):
    clock.set(datetime_of(open_pool[0]["public_at"]))
    r = await post_referral(client, world, booking(open_pool[0]["slot_id"], 1, clock=clock))
    assert r.status_code == 409
    assert r.json()["code"] == "window_closed"


async def test_r7_city_hospital_is_closed_to_another_city(client, world, clock, open_pool):
    await sign(client, world, [1], who="chc_far", institution="P-FAR", region="340202")
    r = await post_referral(
        client, world, booking(open_pool[0]["slot_id"], 1, clock=clock, region="340202"), who="chc_far"
    )
    assert r.status_code == 403
    assert r.json()["code"] == "out_of_scope"
    assert await pool_slots(client, world, who="chc_far") == []
    assert len(await pool_slots(client, world, who="chc_b")) == 2  # same city, other district


async def test_r7_district_hospital_serves_its_own_jurisdiction(client, world, clock):
    # Fuzhou's rule by tier: a county/district hospital's pool is for its own district.
    await push(client, world, [session_item("D1", DAY, slots=10)], who="district_hospital")
    assert len(await pool_slots(client, world, who="chc_a")) == 2  # same district
    assert await pool_slots(client, world, who="chc_b") == []  # same city, other district


async def test_r7_alliance_lead_serves_its_members(client, world, clock):
    r = await client.put(
        f"/v1/hospitals/{world.ids['district_hospital']}/policy",
        json={"policy_code": "anhui-alliance"},
        headers=world.auth("commission"),
    )
    assert r.status_code == 204
    await add_alliance(world_db(world), "H-DIST", ["P-B"])
    await push(client, world, [session_item("D1", DAY, slots=10)], who="district_hospital")
    assert len(await pool_slots(client, world, who="chc_b")) == 2
    assert await pool_slots(client, world, who="chc_a") == []


async def test_r3_provincial_pool_is_for_lower_tier_hospitals(client, world, clock):
    [result] = await push(client, world, [session_item("P1", DAY, slots=20)], who="provincial_hospital")
    assert len(result["pool_slot_numbers"]) == 2  # 10 %
    assert await pool_slots(client, world, who="chc_a") == []  # primary care is not the booker here
    slots = await pool_slots(client, world, who="district_as_booker")
    assert len(slots) == 2
    # The district hospital books for its own patient: no family-doctor contract, same real-name rule.
    r = await post_referral(
        client,
        world,
        booking(slots[0]["slot_id"], 42, clock=clock, doctor_code="D-attending"),
        who="district_as_booker",
    )
    assert r.status_code == 422
    assert r.json()["code"] == "referring_doctor_unknown"
    await push(client, world, [session_item("X1", DAY, slots=2, title="attending")], who="district_hospital")
    r = await post_referral(
        client,
        world,
        booking(slots[0]["slot_id"], 42, clock=clock, doctor_code="D-attending"),
        who="district_as_booker",
    )
    assert r.status_code == 201, r.text
    assert r.json()["referring_institution"]["code"] == "H-DIST"
    # Real name holds for hospital bookers too: the same ID number under another name is refused.
    other = booking(slots[1]["slot_id"], 42, clock=clock, doctor_code="D-attending", name="王五")
    r = await post_referral(client, world, other, who="district_as_booker")
    assert r.status_code == 422
    assert r.json()["code"] == "name_mismatch"


async def test_one_active_referral_per_resident_department_day(client, world, clock, open_pool):
    r = await post_referral(client, world, booking(open_pool[0]["slot_id"], 1, clock=clock))
    assert r.status_code == 201
    r = await post_referral(client, world, booking(open_pool[1]["slot_id"], 1, clock=clock))
    assert r.status_code == 409
    assert r.json()["code"] == "duplicate_referral"


async def test_taken_slot_is_a_409(client, world, clock, open_pool):
    assert (
        await post_referral(client, world, booking(open_pool[0]["slot_id"], 1, clock=clock))
    ).status_code == 201
    r = await post_referral(client, world, booking(open_pool[0]["slot_id"], 2, clock=clock))
    assert r.status_code == 409
    assert r.json()["code"] == "slot_taken"


async def test_slots_never_start_inside_the_pool_window(client, world):
    """A slot cannot have started while bookable: slots start at or after public_at, where the window ends."""
    item = session_item("T1", DAY, slots=4)
    item["public_at"] = item["slots"][2]["starts_at"]
    [result] = await push(client, world, [item])
    assert result["result"] == "rejected"
    assert {(e["code"], e["slot_number"]) for e in result["errors"]} == {
        ("slot_before_public_release", 1),
        ("slot_before_public_release", 2),
    }


async def test_unknown_slot_is_a_404(client, world, clock, open_pool):
    r = await post_referral(client, world, booking(999_999, 1, clock=clock))
    assert r.status_code == 404
    assert r.json()["code"] == "slot_not_found"


async def test_idempotency_key_returns_the_first_answer(client, world, clock, open_pool):
    payload = booking(open_pool[0]["slot_id"], 1, clock=clock)
    first = await post_referral(client, world, payload, **{"Idempotency-Key": "k-1"})
    again = await post_referral(client, world, payload, **{"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    other = booking(open_pool[1]["slot_id"], 2, clock=clock)
    r = await post_referral(client, world, other, **{"Idempotency-Key": "k-1"})
    assert r.status_code == 422
    assert r.json()["code"] == "idempotency_key_reused"


async def test_r11_notice_tells_the_patient_everything(client, world, clock, open_pool):
    r = await post_referral(client, world, booking(open_pool[0]["slot_id"], 1, clock=clock))
    notice = r.json()["notice"]
    assert notice["hospital"] == "合肥市第一人民医院"
    assert notice["department"] == "心血管内科"
    assert notice["doctor_title"] == "associate_chief"
    starts = datetime_of(open_pool[0]["starts_at"]).astimezone(SHANGHAI)
    assert notice["time_band"] == f"{starts:%H:%M}-{starts + timedelta(minutes=15):%H:%M}"
    assert notice["cancel_hotline"] == "12320"
    assert "12320" in notice["how_to_cancel"]
    assert "爽约" in notice["no_show_rule"]
    assert notice["reference"] == r.json()["reference"]


async def test_r17_hospital_sees_the_pool_marker_and_no_id_number(client, world, clock, open_pool):
    r = await post_referral(client, world, booking(open_pool[0]["slot_id"], 1, clock=clock))
    reference = r.json()["reference"]
    r = await client.get(
        "/v1/referrals", params={"service_date": DAY.isoformat()}, headers=world.auth("city_hospital")
    )
    [item] = r.json()["items"]
    assert item["reference"] == reference
    assert item["channel"] == "referral_pool"
    assert item["priority"] is True
    assert item["verification_code"] is None
    assert synthetic_id("340102", seq=1) not in r.text


async def test_owasp_api1_other_institutions_see_nothing(client, world, clock, open_pool):
    r = await post_referral(client, world, booking(open_pool[0]["slot_id"], 1, clock=clock))
    reference = r.json()["reference"]
    for who in ("chc_b", "district_hospital"):
        r = await client.get(f"/v1/referrals/{reference}", headers=world.auth(who))
        assert r.status_code == 404
    r = await client.post(
        f"/v1/referrals/{reference}/cancel", json={"reason": "x"}, headers=world.auth("chc_b")
    )
    assert r.status_code == 404
    r = await client.get("/v1/referrals", headers=world.auth("chc_b"))
    assert r.json()["items"] == []


async def slot_id_of(world, day, number):
    from service.models.slots import ClinicSession, Slot

    db = world_db(world)

    async def q(session):
        return await session.scalar(
            select(Slot.id)
            .join(ClinicSession, ClinicSession.id == Slot.session_id)
            .where(ClinicSession.service_date == day, Slot.number == number)
        )

    return await db.run(q)


def datetime_of(value):
    from datetime import datetime

    return datetime.fromisoformat(value)


def world_db(world):
    return world.db


async def test_r7_search_applies_the_policy_of_the_service_date(client, world, clock, open_pool):
    """A new version narrowing the scope from 9 March hides the 10 March slots it no longer admits."""
    from service.policy.presets import DEFAULT_NO_SHOW
    from tests.factories import TEST_POLICY

    narrower = TEST_POLICY | {
        "effective_from": "2026-03-09",
        "scope": "jurisdiction",
        "no_show_rule": DEFAULT_NO_SHOW,
    }
    r = await client.post(
        "/v1/policies",
        json={k: str(v) if k in ("ratio", "min_senior_share") else v for k, v in narrower.items()},
        headers=world.auth("commission"),
    )
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 2
    # chc_a is in 瑶海区; the city hospital is in 蜀山区: out of the new jurisdiction.
    assert await pool_slots(client, world, who="chc_a") == []
    r = await post_referral(client, world, booking(open_pool[0]["slot_id"], 1, clock=clock))
    assert r.status_code == 403
    assert r.json()["code"] == "out_of_scope"
    assert len(await pool_slots(client, world, who="chc_b")) == 2  # 蜀山区 still admitted
