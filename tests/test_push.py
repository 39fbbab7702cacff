"""Hospitals push sessions; the pool applies the policy to each push (R1–R5, R16, R19)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import select

from service.kit.clock import local_datetime
from service.models.slots import ClinicSession, Slot
from tests.factories import add_wuhu_key, booking, push, push_answer, session_item, sign

DAY = date(2026, 3, 10)


async def test_r1_pool_reserves_a_fifth_of_outpatient_slots(client, world):
    [result] = await push(client, world, [session_item("S1", DAY, slots=20, title="attending")])
    assert result["result"] == "created"
    assert len(result["pool_slot_numbers"]) == 4  # ceil(20 % of 20)
    first = result["pool_slot_numbers"]
    body = await push_answer(
        client, world, [session_item("S2", DAY, slots=10, title="chief", doctor_code="D2")]
    )
    [result] = body["results"]
    # 30 slots: target 6, of which 3 senior (R4), chosen over the whole day before its window
    # opens: the chief's slots take the senior share and more, and S1 keeps what the day needs.
    [change] = body["reservation_changes"]
    assert change["external_id"] == "S1"
    held = len(result["pool_slot_numbers"]) + len(change["pool_slot_numbers"])
    assert held == 6
    assert len(result["pool_slot_numbers"]) >= 3
    assert result["shortfalls"] == []
    assert change["removed_slot_numbers"] == sorted(set(first) - set(change["pool_slot_numbers"]))
    assert change["added_slot_numbers"] == sorted(set(change["pool_slot_numbers"]) - set(first))
    assert change["removed_slot_numbers"]


async def test_r1_reserved_slots_spread_over_the_session(client, world):
    [result] = await push(client, world, [session_item("S1", DAY, slots=20, title="chief")])
    numbers = result["pool_slot_numbers"]
    assert numbers[0] <= 5
    assert numbers[-1] >= 16


async def test_r4_senior_share_shortfall_is_recorded_not_ignored(client, world):
    [result] = await push(client, world, [session_item("S1", DAY, slots=20, title="attending")])
    kinds = {s["kind"]: s for s in result["shortfalls"]}
    assert kinds["senior_share"]["required"] == 2
    assert kinds["senior_share"]["actual"] == 0
    r = await client.get("/v1/hospital/shortfalls", headers=world.auth("city_hospital"))
    assert [(s["department_code"], s["kind"]) for s in r.json()["items"]] == [("CARD", "senior_share")]
    r = await client.get("/v1/shortfalls", headers=world.auth("commission"))
    assert len(r.json()["items"]) == 1
    # A senior session on the same day meets the share, and the shortfall row goes away.
    [result] = await push(client, world, [session_item("S2", DAY, slots=10, title="chief", doctor_code="D2")])
    assert result["shortfalls"] == []
    r = await client.get("/v1/hospital/shortfalls", headers=world.auth("city_hospital"))
    assert r.json()["items"] == []


async def test_commission_reads_the_shortfalls_of_its_own_region_only(client, world, crypto):
    await push(client, world, [session_item("S1", DAY, slots=20, title="attending")])
    hospital = world.ids["city_hospital"]
    r = await client.get("/v1/shortfalls", params={"hospital_id": hospital}, headers=world.auth("commission"))
    assert [s["hospital_id"] for s in r.json()["items"]] == [hospital]
    await add_wuhu_key(world, crypto, "wuhu_commission", "commission")
    for params in ({}, {"hospital_id": hospital}):
        r = await client.get("/v1/shortfalls", params=params, headers=world.auth("wuhu_commission"))
        assert r.status_code == 200, r.text
        assert r.json()["items"] == []


async def test_r2_expert_base_reserves_a_third_of_expert_slots(client, world):
    r = await client.put(
        f"/v1/hospitals/{world.ids['city_hospital']}/policy",
        json={"policy_code": "shanghai"},
        headers=world.auth("commission"),
    )
    assert r.status_code == 204, r.text
    [junior] = await push(
        client, world, [session_item("S1", DAY, slots=30, title="resident", doctor_code="J")]
    )
    assert junior["pool_slot_numbers"] == []  # non-expert slots are outside the base
    [expert] = await push(client, world, [session_item("S2", DAY, slots=12, title="chief", doctor_code="E")])
    assert len(expert["pool_slot_numbers"]) == 4  # ceil(12 / 3)


async def test_r16_slots_longer_than_30_minutes_are_rejected_per_item(client, world):
    bad = session_item("BAD", DAY, slots=3, minutes=45)
    good = session_item("GOOD", DAY, slots=10, doctor_code="D2", period="afternoon")
    results = await push(client, world, [bad, good])
    assert results[0]["result"] == "rejected"
    assert {e["code"] for e in results[0]["errors"]} == {"r16_slot_too_long"}
    assert results[1]["result"] == "created"
    r = await client.get("/v1/pool/slots", headers=world.auth("chc_a"))
    assert {s["number"] for s in r.json()["items"]} == set(results[1]["pool_slot_numbers"])


async def test_r16_database_refuses_long_slots_too(client, db, world):
    import sqlalchemy.exc

    async def insert_long(session):
        await session.execute(
            Slot.__table__.insert().values(
                session_id=await session.scalar(select(ClinicSession.id)), hospital_id=world.ids["city_hospital"], number=1,
                starts_at=local_datetime(DAY, 8), ends_at=local_datetime(DAY, 9),
                pool_opens_at=local_datetime(DAY, 0) - timedelta(days=2),
                public_at=local_datetime(DAY, 0), status="public",
            )
        )  # fmt: skip

    await push(client, world, [session_item("S1", DAY, slots=2)])
    with pytest.raises(sqlalchemy.exc.IntegrityError, match="ck_slots_r16_length"):
        await db.run(insert_long)


async def test_r19_push_is_idempotent_and_ordered_by_version(client, world):
    item = session_item("S1", DAY, slots=10, version=5)
    [first] = await push(client, world, [item])
    [replay] = await push(client, world, [item])
    assert replay["result"] == "unchanged"
    assert replay["pool_slot_numbers"] == first["pool_slot_numbers"]
    assert replay["pool_slot_ids"] == first["pool_slot_ids"]
    older = session_item("S1", DAY, slots=4, version=3)
    [stale] = await push(client, world, [older])
    assert stale["result"] == "stale"
    assert stale["version"] == 5
    newer = session_item("S1", DAY, slots=12, version=6)
    [updated] = await push(client, world, [newer])
    assert updated["result"] == "updated"
    # Before the pool window opens an update re-selects over the whole day: 3 of 12.
    assert len(updated["pool_slot_numbers"]) == 3


async def test_r5_late_push_records_a_lead_time_shortfall(client, world, clock):
    # Public release in 3 hours: the pool gets less than the policy's full day.
    release = clock.now() + timedelta(hours=3)
    [result] = await push(client, world, [session_item("S1", DAY, slots=10, public_at=release)], days_ahead=0)
    lead = [s for s in result["shortfalls"] if s["kind"] == "lead_time"]
    assert lead == [
        {
            "department_code": "CARD",
            "service_date": DAY.isoformat(),
            "resource_kind": "outpatient",
            "kind": "lead_time",
            "required": 1440,
            "actual": 180,
        }
    ]
    assert len(result["pool_slot_numbers"]) == 2  # still reserved for the time left


async def test_r6_push_after_public_release_reserves_nothing(client, world, clock):
    release = clock.now() - timedelta(hours=1)
    [result] = await push(client, world, [session_item("S1", DAY, slots=10, public_at=release)], days_ahead=0)
    assert result["pool_slot_numbers"] == []
    assert {s["kind"] for s in result["shortfalls"]} >= {"ratio", "lead_time"}


async def test_r1_hospital_marked_slots_are_checked_not_changed(client, world, db):
    from service.models.registry import Organisation

    async def mark_mode(session):
        org = await session.get(Organisation, world.ids["city_hospital"])
        org.reservation_mode = "hospital"

    await db.run(mark_mode)
    [result] = await push(client, world, [session_item("S1", DAY, slots=10, title="attending", reserved=[1])])
    assert result["pool_slot_numbers"] == [1]
    kinds = {s["kind"]: (s["required"], s["actual"]) for s in result["shortfalls"]}
    assert kinds == {"ratio": (2, 1), "senior_share": (1, 0)}


async def test_r10_preferred_departments_reserve_others_do_not(client, world):
    r = await client.put(
        f"/v1/hospitals/{world.ids['city_hospital']}/policy",
        json={"policy_code": "tianjin"},
        headers=world.auth("commission"),
    )
    assert r.status_code == 204
    [cardio, ortho] = await push(
        client,
        world,
        [
            session_item("S1", DAY, slots=10),
            session_item("S2", DAY, slots=10, department="ORTH", specialty="orthopaedics", doctor_code="D2"),
        ],
    )
    assert len(cardio["pool_slot_numbers"]) == 2
    assert ortho["pool_slot_numbers"] == []
    assert ortho["shortfalls"] == []


async def test_r19_withdrawn_session_cancels_its_referrals_with_a_reason(client, world, clock):
    await push(client, world, [session_item("S1", DAY, slots=10)])
    await sign(client, world, [1])
    r = await client.get("/v1/pool/slots", headers=world.auth("chc_a"))
    slot_id = r.json()["items"][0]["slot_id"]
    r = await client.post("/v1/referrals", json=booking(slot_id, 1, clock=clock), headers=world.auth("chc_a"))
    reference = r.json()["reference"]
    withdrawn = session_item("S1", DAY, slots=10, version=2) | {
        "status": "withdrawn",
        "withdrawn_reason": "医生外出会诊",
    }
    [result] = await push(client, world, [withdrawn])
    assert result["result"] == "withdrawn"
    assert result["pool_slot_numbers"] == []
    r = await client.get(f"/v1/referrals/{reference}", headers=world.auth("chc_a"))
    body = r.json()
    assert body["status"] == "cancelled"
    assert body["cancelled_by"] == "hospital"
    assert body["cancel_reason"] == "医生外出会诊"
    assert await pool_count(client, world) == 0


async def test_r19_update_cannot_move_a_booked_slot(client, world, clock):
    [first] = await push(client, world, [session_item("S1", DAY, slots=10)])
    await sign(client, world, [1])
    r = await client.get("/v1/pool/slots", headers=world.auth("chc_a"))
    slot = r.json()["items"][0]
    r = await client.post(
        "/v1/referrals", json=booking(slot["slot_id"], 1, clock=clock), headers=world.auth("chc_a")
    )
    assert r.status_code == 201
    moved = session_item("S1", DAY, slots=10, version=2, first_hour=9)
    [result] = await push(client, world, [moved])
    assert result["result"] == "rejected"
    assert {e["code"] for e in result["errors"]} == {"booked_slot_changed"}
    assert first["pool_slot_numbers"]


async def test_push_without_policy_is_rejected_per_item(client, world, db):
    from service.models.policy import HospitalPolicy

    async def unassign(session):
        await session.delete(await session.get(HospitalPolicy, (world.ids["city_hospital"], "outpatient")))

    await db.run(unassign)
    [result] = await push(client, world, [session_item("S1", DAY)])
    assert result["result"] == "rejected"
    assert result["errors"][0]["code"] == "no_policy"


async def test_push_schema_errors_are_problem_json(client, world):
    r = await client.post(
        "/v1/hospital/sessions",
        json={"sessions": [{"external_id": "x"}]},
        headers=world.auth("city_hospital"),
    )
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "invalid_request"


async def pool_count(client, world) -> int:
    r = await client.get("/v1/pool/slots", headers=world.auth("chc_a"))
    return len(r.json()["items"])


async def test_push_keeps_slot_rows_for_removed_numbers(client, world, db):
    await push(client, world, [session_item("S1", DAY, slots=10)])
    await push(client, world, [session_item("S1", DAY, slots=5, version=2)])

    async def statuses(session):
        return sorted((s.number, s.status) for s in await session.scalars(select(Slot)))

    rows = await db.run(statuses)
    assert [n for n, st in rows if st == "withdrawn"] == [6, 7, 8, 9, 10]
