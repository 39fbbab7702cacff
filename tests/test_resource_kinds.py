"""Examinations and inpatient beds in the pool beside outpatient visits (R18).

Each kind has its own policy at a hospital (ratio, lead time, scope, diseases);
booking, cancelling, returning and the events work the same way for all three.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from service.kit.clock import local_datetime
from service.models.events import Event
from service.models.registry import Organisation
from service.policy.presets import DEFAULT_NO_SHOW
from service.slots.release import release_due_slots
from tests.factories import booking, pool_slots, push, session_item, sign, to_local
from tests.test_contracts import _validator
from tests.test_slip import _text

DAY = date(2026, 3, 10)  # public release 3 March 08:00; now is 2 March 09:00
LUNG = ["C34", "R91"]  # lung cancer, abnormal findings on lung imaging: what a CT policy covers
STROKE_AND_MI = ["I63", "I21"]


def kind_policy(code: str, kind: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "code": code,
        "name": f"test: {kind} pool",
        "resource_kind": kind,
        "effective_from": "2024-01-01",
        "ratio": "0.5",
        "ratio_base": "all_outpatient",
        "min_senior_share": "0",
        "lead_minutes": 2 * 24 * 60,
        "scope": "city",
        "disease_prefixes": LUNG,
        "preferred_specialties": [],
        "consultation_max_age_hours": 72,
        "cancel_cutoff_minutes": 120,
        "cancel_hotline": "12320",
        "no_show_rule": DEFAULT_NO_SHOW,
    }
    return body | changes


async def publish_and_assign(client, world, body: dict[str, Any], hospital: str = "city_hospital") -> None:
    r = await client.post("/v1/policies", json=body, headers=world.auth("commission"))
    assert r.status_code == 201, r.text
    r = await client.put(
        f"/v1/hospitals/{world.ids[hospital]}/policy",
        json={"policy_code": body["code"]},
        headers=world.auth("commission"),
    )
    assert r.status_code == 204, r.text


def exam_item(external_id: str, day: date = DAY, *, modality: str = "CT", **kwargs: Any) -> dict[str, Any]:
    """A modality's morning block: 15-minute exam times, no doctor."""
    kwargs.setdefault("department", "RAD")
    kwargs.setdefault("specialty", "radiology")
    item = session_item(external_id, day, **kwargs)
    del item["doctor"]
    item["department"]["name"] = "医学影像科"
    return item | {"resource_kind": "examination", "modality": modality}


def bed_item(external_id: str, day: date = DAY, *, beds: int = 10, version: int = 1) -> dict[str, Any]:
    """One ward's bed day: bed numbers 1..beds, each admitted in the 08:00-11:00 window."""
    item = session_item(external_id, day, slots=0, version=version)
    del item["doctor"]
    window = (local_datetime(day, 8), local_datetime(day, 11))
    item["slots"] = [
        {"number": n, "external_id": f"{external_id}-B{n:02d}", "starts_at": window[0].isoformat(),
         "ends_at": window[1].isoformat()}
        for n in range(1, beds + 1)
    ]  # fmt: skip
    return item | {"resource_kind": "bed", "ward": {"code": "W-CARD-1", "name": "心内科一病区"}}


async def events_of(db, event_type: str) -> list[dict[str, Any]]:
    async with db.sessionmaker() as session:
        rows = await session.scalars(
            select(Event.payload)
            .where(Event.recipient_id == Event.hospital_id)
            .where(Event.type == event_type)
            .order_by(Event.id)
        )
        return list(rows)


def valid(payload: dict[str, Any]) -> dict[str, Any]:
    """The event's data, after checking the payload against the newest schema of its type."""
    _validator(payload["type"]).validate(payload)
    data: dict[str, Any] = payload["data"]
    return data


# --- policy per kind ---------------------------------------------------------------------------


async def test_r18_each_kind_reserves_under_its_own_policy(client, world):
    """Same hospital, same department, same day: 20 % of the visits and 50 % of the CT block."""
    await publish_and_assign(client, world, kind_policy("test-ct", "examination"))
    visits = session_item("OP1", DAY, slots=10, department="RAD", specialty="radiology")
    ct = exam_item("CT1", slots=10)
    [visits_result, ct_result] = await push(client, world, [visits, ct])
    assert (visits_result["result"], ct_result["result"]) == ("created", "created")
    assert len(visits_result["pool_slot_numbers"]) == 2  # test-city: ceil(0.2 × 10), the CT block not counted
    assert len(ct_result["pool_slot_numbers"]) == 5  # test-ct: ceil(0.5 × 10)
    public_at = to_local(ct["public_at"])
    assert to_local(ct_result["pool_opens_at"]) == public_at - timedelta(days=2)  # the CT lead time
    assert to_local(visits_result["pool_opens_at"]) == public_at - timedelta(days=1)


async def test_r18_a_kind_without_a_policy_is_rejected_per_item(client, world):
    [visit, beds] = await push(client, world, [session_item("OP1", DAY), bed_item("W1")])
    assert visit["result"] == "created"
    assert beds["result"] == "rejected"
    assert [e["code"] for e in beds["errors"]] == ["no_policy"]


async def test_r18_shortfalls_are_per_kind(client, world):
    await publish_and_assign(client, world, kind_policy("test-ct", "examination"))
    # The hospital marks its own pool slots; it holds one CT slot of four (target 2) and enough visits.
    await _mark_own_slots(world)
    visits = session_item("OP1", DAY, slots=5, department="RAD", reserved=[1, 2])
    ct = exam_item("CT1", slots=4, reserved=[1])
    [visits_result, ct_result] = await push(client, world, [visits, ct])
    assert visits_result["shortfalls"] == []
    assert ct_result["shortfalls"] == [
        {
            "department_code": "RAD",
            "service_date": DAY.isoformat(),
            "resource_kind": "examination",
            "kind": "ratio",
            "required": 2,
            "actual": 1,
        }
    ]
    r = await client.get("/v1/hospital/shortfalls", headers=world.auth("city_hospital"))
    assert [(row["resource_kind"], row["kind"]) for row in r.json()["items"]] == [("examination", "ratio")]


async def _mark_own_slots(world) -> None:
    await world.db.run(
        lambda s: s.execute(
            update(Organisation)
            .where(Organisation.id == world.ids["city_hospital"])
            .values(reservation_mode="hospital")
        )
    )


async def test_r18_scope_is_per_kind(client, world):
    """The district hospital's outpatient pool is its own district's; its CT pool is city-wide."""
    await publish_and_assign(
        client, world, kind_policy("test-ct", "examination"), hospital="district_hospital"
    )
    await push(client, world, [session_item("OP1", DAY), exam_item("CT1", slots=4)], who="district_hospital")
    seen_by_other_district = await pool_slots(client, world, who="chc_b")
    assert {s["resource_kind"] for s in seen_by_other_district} == {"examination"}
    seen_at_home = await pool_slots(client, world, who="chc_a")
    assert {s["resource_kind"] for s in seen_at_home} == {"outpatient", "examination"}


async def test_r18_exam_diagnosis_off_the_ct_list_is_refused(client, world, clock):
    await publish_and_assign(client, world, kind_policy("test-ct", "examination"))
    await push(client, world, [exam_item("CT1", slots=4)])
    await sign(client, world, [1])
    [slot, *_] = await pool_slots(client, world, resource_kind="examination")
    # I10 (hypertension) is on the hospital's outpatient list, not on its CT policy's.
    r = await client.post(
        "/v1/referrals", json=booking(slot["slot_id"], 1, clock=clock), headers=world.auth("chc_a")
    )
    assert r.status_code == 422
    assert r.json()["code"] == "disease_not_covered"
    assert r.json()["allowed_prefixes"] == LUNG
    r = await client.post(
        "/v1/referrals",
        json=booking(slot["slot_id"], 1, clock=clock, diagnoses=["C34.1"]),
        headers=world.auth("chc_a"),
    )
    assert r.status_code == 201, r.text
    assert r.json()["policy"] == "test-ct v1"


async def test_r18_senior_rules_are_for_outpatient_policies_only(client, world):
    for changes in ({"ratio_base": "expert"}, {"min_senior_share": "0.5"}):
        r = await client.post(
            "/v1/policies",
            json=kind_policy("test-ct", "examination", **changes),
            headers=world.auth("commission"),
        )
        assert r.status_code == 422, changes
        assert r.json()["code"] == "invalid_request"


async def test_r18_a_policy_code_keeps_its_kind(client, world):
    await publish_and_assign(client, world, kind_policy("test-ct", "examination"))
    r = await client.post(
        "/v1/policies", json=kind_policy("test-ct", "bed"), headers=world.auth("commission")
    )
    assert r.status_code == 422
    assert r.json()["code"] == "policy_kind_changed"


async def test_r18_assigning_a_kind_keeps_the_other_kinds(client, world):
    await publish_and_assign(client, world, kind_policy("test-beds", "bed", disease_prefixes=STROKE_AND_MI))
    [visit, beds] = await push(client, world, [session_item("OP1", DAY, slots=10), bed_item("W1")])
    assert visit["result"] == beds["result"] == "created"
    assert len(visit["pool_slot_numbers"]) == 2  # still test-city's 20 %
    assert len(beds["pool_slot_numbers"]) == 5


# --- push validation -----------------------------------------------------------------------------


def _without(item: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != key}


@pytest.mark.parametrize(
    ("item", "codes"),
    [
        (exam_item("X", modality="CT") | {"modality": None}, {"modality_required"}),
        (_without(bed_item("X"), "ward"), {"ward_required"}),
        (_without(session_item("X", DAY), "doctor"), {"doctor_required"}),
        (session_item("X", DAY) | {"modality": "CT"}, {"detail_not_for_kind"}),
        (exam_item("X") | {"ward": {"code": "W", "name": "病区"}}, {"detail_not_for_kind"}),
        (bed_item("X") | {"modality": "MRI"}, {"detail_not_for_kind"}),
        (exam_item("X", minutes=45), {"r16_slot_too_long"}),
    ],
    ids=["exam-no-modality", "bed-no-ward", "visit-no-doctor", "visit-with-modality", "exam-with-ward",
         "bed-with-modality", "exam-over-30-minutes"],
)  # fmt: skip
async def test_r18_push_names_what_its_kind_needs(client, world, item, codes):
    await publish_and_assign(client, world, kind_policy("test-ct", "examination"))
    await publish_and_assign(client, world, kind_policy("test-beds", "bed"))
    [result] = await push(client, world, [item])
    assert result["result"] == "rejected"
    assert {e["code"] for e in result["errors"]} == codes


async def test_r18_a_bed_window_is_at_most_a_day(client, world):
    await publish_and_assign(client, world, kind_policy("test-beds", "bed"))
    item = bed_item("W1", beds=2)
    item["slots"][1]["ends_at"] = local_datetime(DAY + timedelta(days=1), 9).isoformat()
    [result] = await push(client, world, [item])
    assert result["result"] == "rejected"
    assert [(e["code"], e["slot_number"]) for e in result["errors"]] == [("bed_window_too_long", 2)]


async def test_r18_an_unknown_modality_is_a_schema_error(client, world):
    r = await client.post(
        "/v1/hospital/sessions",
        json={"sessions": [exam_item("X", modality="CT scan")]},
        headers=world.auth("city_hospital"),
    )
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_request"


async def test_r18_a_session_keeps_its_kind(client, world):
    await publish_and_assign(client, world, kind_policy("test-ct", "examination"))
    await push(client, world, [session_item("S1", DAY, department="RAD")])
    [result] = await push(client, world, [exam_item("S1", version=2)])
    assert result["result"] == "rejected"
    assert [e["code"] for e in result["errors"]] == ["session_moved"]


# --- end to end ----------------------------------------------------------------------------------


async def test_r18_search_filters_by_kind_and_modality(client, world):
    await publish_and_assign(client, world, kind_policy("test-ct", "examination"))
    await push(
        client,
        world,
        [session_item("OP1", DAY), exam_item("CT1", slots=4), exam_item("MR1", modality="MRI", slots=4)],
    )
    everything = await pool_slots(client, world)
    assert sorted({(s["resource_kind"], s["modality"]) for s in everything}) == [
        ("examination", "CT"),
        ("examination", "MRI"),
        ("outpatient", None),
    ]
    ct = await pool_slots(client, world, resource_kind="examination", modality="CT")
    assert len(ct) == 2 and all(s["modality"] == "CT" and s["doctor"] is None for s in ct)
    visits = await pool_slots(client, world, resource_kind="outpatient")
    assert visits and all(s["resource_kind"] == "outpatient" and s["doctor"] for s in visits)
    assert await pool_slots(client, world, resource_kind="bed") == []


async def _book_cancel_and_return(client, world, clock, db, slot: dict[str, Any], diagnoses: list[str]):
    """Book ``slot``, cancel it back to the pool, then let it return to the public at public_at."""
    r = await client.post(
        "/v1/referrals",
        json=booking(slot["slot_id"], 1, clock=clock, diagnoses=diagnoses),
        headers=world.auth("chc_a"),
    )
    assert r.status_code == 201, r.text
    referral = r.json()
    assert slot["slot_id"] not in {s["slot_id"] for s in await pool_slots(client, world)}

    r = await client.post(
        f"/v1/referrals/{referral['reference']}/cancel",
        json={"reason": "admitted elsewhere"},
        headers=world.auth("chc_a"),
    )
    assert r.status_code == 200, r.text
    assert slot["slot_id"] in {s["slot_id"] for s in await pool_slots(client, world)}  # back to the pool

    clock.set(datetime.fromisoformat(slot["public_at"]))
    assert await release_due_slots(db, clock) >= 1
    assert await pool_slots(client, world) == []
    booked = valid((await events_of(db, "referral.booked"))[-1])
    cancelled = valid((await events_of(db, "referral.cancelled"))[-1])
    returned = [valid(p) for p in await events_of(db, "slots.returned")]
    assert cancelled["cancellation"]["slot_returned_to"] == "pool"
    return referral, booked, cancelled, returned


async def test_r18_an_examination_end_to_end(client, world, clock, db):
    await publish_and_assign(client, world, kind_policy("test-ct", "examination"))
    [pushed] = await push(client, world, [exam_item("CT1", slots=8)])
    await sign(client, world, [1])
    [slot, *_] = await pool_slots(client, world, resource_kind="examination", modality="CT")
    assert (slot["resource_kind"], slot["modality"], slot["ward"], slot["doctor"]) == (
        "examination",
        "CT",
        None,
        None,
    )

    referral, booked, cancelled, returned = await _book_cancel_and_return(
        client, world, clock, db, slot, ["R91"]
    )
    assert (referral["resource_kind"], referral["modality"], referral["ward"], referral["doctor"]) == (
        "examination",
        "CT",
        None,
        None,
    )
    notice = referral["notice"]
    assert (notice["resource_kind"], notice["modality"], notice["doctor"]) == ("examination", "CT", None)
    assert notice["time_band"] == f"{to_local(slot['starts_at']):%H:%M}-{to_local(slot['ends_at']):%H:%M}"
    for data in (booked, cancelled):
        assert data["session"]["resource_kind"] == "examination"
        assert (data["session"]["modality"], data["session"]["ward"], data["doctor"]) == ("CT", None, None)
    assert len(returned) == 1
    assert returned[0]["session"]["external_id"] == "CT1"
    assert (returned[0]["session"]["resource_kind"], returned[0]["session"]["modality"]) == (
        "examination",
        "CT",
    )
    assert sorted(s["number"] for s in returned[0]["slots"]) == pushed["pool_slot_numbers"]


async def test_r18_a_bed_end_to_end(client, world, clock, db):
    await publish_and_assign(
        client, world, kind_policy("test-beds", "bed", ratio="0.3", disease_prefixes=STROKE_AND_MI)
    )
    [pushed] = await push(client, world, [bed_item("W1", beds=10)])
    assert len(pushed["pool_slot_numbers"]) == 3
    await sign(client, world, [1])
    beds = await pool_slots(client, world, resource_kind="bed")
    assert sorted(s["number"] for s in beds) == pushed["pool_slot_numbers"]
    slot = beds[0]
    assert slot["ward"] == {"code": "W-CARD-1", "name": "心内科一病区"}

    referral, booked, cancelled, returned = await _book_cancel_and_return(
        client, world, clock, db, slot, ["I63.9"]
    )
    assert (referral["resource_kind"], referral["ward"]["name"], referral["slot"]["number"]) == (
        "bed",
        "心内科一病区",
        slot["number"],
    )
    notice = referral["notice"]
    assert (notice["resource_kind"], notice["ward"], notice["slot_number"]) == (
        "bed",
        "心内科一病区",
        slot["number"],
    )
    assert notice["time_band"] == "08:00-11:00"  # the ward's admission window
    for data in (booked, cancelled):
        assert data["session"]["ward"] == {"code": "W-CARD-1", "name": "心内科一病区"}
        assert (data["session"]["resource_kind"], data["session"]["modality"]) == ("bed", None)
    assert [r["session"]["resource_kind"] for r in returned] == ["bed"]
    assert sorted(s["number"] for s in returned[0]["slots"]) == pushed["pool_slot_numbers"]


async def test_r18_outpatient_events_carry_their_kind(client, world, clock, db):
    await push(client, world, [session_item("OP1", DAY)])
    await sign(client, world, [1])
    [slot, *_] = await pool_slots(client, world)
    r = await client.post(
        "/v1/referrals", json=booking(slot["slot_id"], 1, clock=clock), headers=world.auth("chc_a")
    )
    assert r.status_code == 201
    assert (r.json()["resource_kind"], r.json()["doctor"]["title"]) == ("outpatient", "associate_chief")
    [payload] = await events_of(db, "referral.booked")
    data = valid(payload)
    assert (
        data["session"] | {"resource_kind": "outpatient", "modality": None, "ward": None} == data["session"]
    )
    assert data["doctor"]["code"] == "D-associate_chief"


# --- the database holds the shape ------------------------------------------------------------------


async def test_r18_the_database_refuses_a_session_without_its_detail(client, world, db):
    import sqlalchemy.exc

    from service.models.registry import Department
    from service.models.slots import ClinicSession

    async def insert(kind: str, **detail: Any) -> None:
        async def work(session):
            dept = Department(hospital_id=world.ids["city_hospital"], code=f"D-{kind}", name="科室")
            session.add(dept)
            await session.flush()
            session.add(
                ClinicSession(
                    hospital_id=world.ids["city_hospital"], external_id=f"X-{kind}", version=1,
                    department_id=dept.id, resource_kind=kind, service_date=DAY, period="morning",
                    status="active", updated_at=world.clock.now(), **detail,
                )
            )  # fmt: skip
            await session.flush()

        await db.run(work)

    for kind, detail in (("outpatient", {}), ("examination", {}), ("bed", {"modality": "CT"})):
        with pytest.raises(sqlalchemy.exc.IntegrityError, match="ck_clinic_sessions_resource_detail"):
            await insert(kind, **detail)
    await insert("examination", modality="CT")  # no doctor needed


async def test_r18_downgrade_refuses_to_drop_examination_data(owner_url):
    import asyncpg
    from sqlalchemy.engine import make_url

    from service.models.migrations import downgrade, upgrade

    url = make_url(owner_url)
    admin = url.set(database="postgres").render_as_string(hide_password=False).replace("+asyncpg", "")
    name = f"{url.database}_kinds"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    target = url.set(database=name).render_as_string(hide_password=False)
    try:
        await upgrade(target)
        check = await asyncpg.connect(target.replace("+asyncpg", ""))
        await check.execute(
            "INSERT INTO policies (code, version, name, resource_kind, effective_from, ratio, ratio_base,"
            " min_senior_share, lead_minutes, scope, disease_prefixes, preferred_specialties,"
            " consultation_max_age_hours, cancel_cutoff_minutes, cancel_hotline, no_show_rule, created_at)"
            " VALUES ('ct', 1, 'CT', 'examination', '2024-01-01', 0.5, 'all_outpatient', 0, 1440, 'city',"
            " '{C34}', '{}', 72, 120, '12320', '{}', now())"
        )
        with pytest.raises(RuntimeError, match="policies holds 1 examination or bed rows"):
            await downgrade(target, "0001")
        assert await check.fetchval("SELECT count(*) FROM policies WHERE resource_kind = 'examination'") == 1
        await check.close()
    finally:
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await conn.close()


@pytest.mark.parametrize(
    ("kind", "printed", "number"),
    [("examination", "CT检查", "号"), ("bed", "住院床位（心内科一病区）", "床")],
)
async def test_r18_the_slip_and_sms_name_what_was_booked(client, world, clock, kind, printed, number):
    if kind == "examination":
        await publish_and_assign(client, world, kind_policy("test-ct", "examination"))
        await push(client, world, [exam_item("CT1", slots=8)])
        diagnoses = ["R91"]
    else:
        await publish_and_assign(
            client, world, kind_policy("test-beds", "bed", ratio="0.3", disease_prefixes=STROKE_AND_MI)
        )
        await push(client, world, [bed_item("W1", beds=10)])
        diagnoses = ["I63.9"]
    await sign(client, world, [1])
    [slot, *_] = await pool_slots(client, world, resource_kind=kind)
    r = await client.post(
        "/v1/referrals",
        json=booking(slot["slot_id"], 1, clock=clock, diagnoses=diagnoses),
        headers=world.auth("chc_a"),
    )
    assert r.status_code == 201, r.text
    reference = r.json()["reference"]

    pdf = await client.get(f"/v1/referrals/{reference}/slip.pdf", headers=world.auth("chc_a"))
    assert pdf.status_code == 200, pdf.text
    text = _text(pdf.content)
    assert printed in text
    assert f"{slot['number']}{number}" in text
    assert "医生" not in text.replace("家庭医生", "")  # no doctor is named for a machine or a ward
    sms = (await client.get(f"/v1/referrals/{reference}/notice", headers=world.auth("chc_a"))).json()["sms"]
    assert printed.split("（")[0] in sms["text"] and f"{slot['number']}{number}" in sms["text"]
