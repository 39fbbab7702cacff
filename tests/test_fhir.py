"""FHIR R4 views (R19): every served resource validates, searches and paging work, scope holds."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pytest
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.location import Location
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.schedule import Schedule
from fhir.resources.R4B.slot import Slot as FhirSlot
from sqlalchemy import select

from service.fhir.validation import code_list_errors
from service.kit.clock import SHANGHAI
from service.models.audit import AuditEntry
from service.models.slots import ClinicSession, Slot
from tests.factories import booking, pool_slots, push, session_item, sign, synthetic_id
from tests.test_resource_kinds import STROKE_AND_MI, bed_item, exam_item, kind_policy, publish_and_assign

DAY = date(2026, 3, 10)  # pool window open at the tests' start (opened 2 March 08:00)
LATER = date(2026, 3, 12)  # pool opens 4 March 08:00: reserved, not yet bookable
POOL_RESERVED = "https://slotpool.example/fhir/StructureDefinition/pool-reserved"
PUBLIC_AT = "https://slotpool.example/fhir/StructureDefinition/public-at"
RESOURCE_KIND = "https://slotpool.example/fhir/StructureDefinition/resource-kind"
MODALITY = "https://slotpool.example/fhir/CodeSystem/modality"
KIND = "https://slotpool.example/fhir/CodeSystem/resource-kind"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
SERVICE_CATEGORY = "http://terminology.hl7.org/CodeSystem/service-category"
SESSION_DOCTOR = "https://slotpool.example/fhir/StructureDefinition/session-doctor"
BOOKING_DEEP_LINK = "http://fhir-registry.smarthealthit.org/StructureDefinition/booking-deep-link"

# The required code lists, written out from the FHIR R4 specification.
SLOT_STATUS = {"busy", "free", "busy-unavailable", "busy-tentative", "entered-in-error"}
APPOINTMENT_STATUS = {
    "proposed", "pending", "booked", "arrived", "fulfilled", "cancelled", "noshow",
    "entered-in-error", "checked-in", "waitlist",
}  # fmt: skip
PARTICIPANT_STATUS = {"accepted", "declined", "tentative", "needs-action"}
ISSUE_SEVERITY = {"fatal", "error", "warning", "information"}
ISSUE_TYPE = {
    "invalid", "structure", "required", "value", "invariant", "security", "login", "unknown",
    "expired", "forbidden", "suppressed", "processing", "not-supported", "duplicate",
    "multiple-matches", "not-found", "deleted", "too-long", "code-invalid", "extension",
    "too-costly", "business-rule", "conflict", "transient", "lock-error", "no-store",
    "exception", "timeout", "incomplete", "throttled", "informational",
}  # fmt: skip
MODELS: dict[str, Any] = {
    "Location": Location,
    "Schedule": Schedule,
    "Slot": FhirSlot,
    "Appointment": Appointment,
    "Bundle": Bundle,
    "OperationOutcome": OperationOutcome,
    "CapabilityStatement": CapabilityStatement,
}


def empty_values(value: Any, path: str = "") -> list[str]:
    """Paths of empty arrays, objects or strings, which FHIR JSON never carries."""
    if value in ([], {}, "", None):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in empty_values(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in empty_values(v, f"{path}[{i}]")]
    return []


def validate(resource: dict[str, Any]) -> Any:
    """Parse with the fhir.resources model and check every required code list."""
    assert empty_values(resource) == []
    model = MODELS[resource["resourceType"]].model_validate(resource)
    assert code_list_errors(model) == []
    if resource["resourceType"] == "Slot":
        assert resource["status"] in SLOT_STATUS
    if resource["resourceType"] == "Appointment":
        assert resource["status"] in APPOINTMENT_STATUS
        assert {p["status"] for p in resource["participant"]} <= PARTICIPANT_STATUS
    if resource["resourceType"] == "OperationOutcome":
        assert all(i["severity"] in ISSUE_SEVERITY and i["code"] in ISSUE_TYPE for i in resource["issue"])
    return model


async def fhir_get(client, world, url: str, who: str, expect: int = 200, **params: Any) -> dict[str, Any]:
    r = await client.get(url, params=params or None, headers=world.auth(who) if who else {})
    assert r.status_code == expect, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = r.json()
    validate(body)
    return body


async def search_all(client, world, url: str, who: str, **params: Any) -> list[dict[str, Any]]:
    """Follow Bundle next links to the end; every page and every entry validates."""
    resources: list[dict[str, Any]] = []
    bundle = await fhir_get(client, world, url, who, **params)
    while True:
        assert bundle["type"] == "searchset"
        for entry in bundle.get("entry", []):
            validate(entry["resource"])
            assert entry["fullUrl"].endswith(
                f"/fhir/{entry['resource']['resourceType']}/{entry['resource']['id']}"
            )
            resources.append(entry["resource"])
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        assert "self" in links
        if "next" not in links:
            return resources
        bundle = await fhir_get(client, world, links["next"], who)


def outcome_code(body: dict[str, Any]) -> str:
    assert body["resourceType"] == "OperationOutcome"
    code: str = body["issue"][0]["details"]["coding"][0]["code"]
    return code


def session_doctor(schedule: dict[str, Any]) -> dict[str, str] | None:
    """The session-doctor extension's parts, by name; None when the Schedule names no doctor."""
    for e in schedule.get("extension", []):
        if e["url"] == SESSION_DOCTOR:
            return {
                part["url"]: next(v for k, v in part.items() if k.startswith("value"))
                for part in e["extension"]
            }
    return None


def ext(resource: dict[str, Any], url: str) -> Any:
    for e in resource.get("extension", []):
        if e["url"] == url:
            return next(v for k, v in e.items() if k.startswith("value"))
    return None


async def db_slots(db, hospital: str | None = None, world=None) -> list[tuple[Slot, ClinicSession]]:
    async def q(session):
        stmt = select(Slot, ClinicSession).join(ClinicSession, ClinicSession.id == Slot.session_id)
        if hospital is not None:
            stmt = stmt.where(Slot.hospital_id == world.ids[hospital])
        return (await session.execute(stmt.order_by(Slot.id))).all()

    return list(await db.run(q))


@pytest.fixture
async def pool(client, world, clock):
    """City hospital: one open session and one not yet open; district hospital: one session; one booking."""
    await push(client, world, [session_item("S1", DAY), session_item("S2", LATER, doctor_code="D-2")])
    await push(client, world, [session_item("D1", DAY, department="NEUR")], who="district_hospital")
    await sign(client, world, [1, 2, 3])
    [first, *_] = await pool_slots(client, world, hospital_id=world.ids["city_hospital"])
    r = await client.post(
        "/v1/referrals", json=booking(first["slot_id"], 1, clock=clock), headers=world.auth("chc_a")
    )
    assert r.status_code == 201, r.text
    return {"booked_slot": first["slot_id"], "reference": r.json()["reference"]}


async def test_r19_metadata_declares_fhir_r4_read_only(client, world):
    body = await fhir_get(client, world, "/fhir/metadata", "")
    assert body["fhirVersion"] == "4.0.1"
    assert body["format"] == ["json"]
    served = {r["type"]: {i["code"] for i in r["interaction"]} for r in body["rest"][0]["resource"]}
    assert served == {t: {"read", "search-type"} for t in ("Location", "Schedule", "Slot", "Appointment")}
    params = {r["type"]: {p["name"] for p in r["searchParam"]} for r in body["rest"][0]["resource"]}
    assert "service-type" in params["Slot"] and "service-type" in params["Schedule"]


async def test_r19_every_resource_type_served_validates(client, world, pool):
    for kind in ("Location", "Schedule", "Slot"):
        found = await search_all(client, world, f"/fhir/{kind}", "platform")
        assert found, kind
        read = await fhir_get(client, world, f"/fhir/{kind}/{found[0]['id']}", "platform")
        assert read == found[0]
    [appointment] = await search_all(client, world, "/fhir/Appointment", "city_hospital")
    assert appointment == await fhir_get(client, world, f"/fhir/Appointment/{pool['reference']}", "chc_a")
    schedule = (await search_all(client, world, "/fhir/Schedule", "city_hospital"))[0]
    assert schedule["actor"][0]["reference"] == f"Location/{world.ids['city_hospital']}"


CONTACT = {"address_line": "安徽省合肥市蜀山区淮河路390号", "postal_code": "230001", "phone": "0551-62283114"}


async def test_r19_location_carries_the_registrys_address_and_phone(client, world, pool):
    """SMART Scheduling Links asks for telecom, address.line and postalCode: they come from the registry."""
    url = f"/fhir/Location/{world.ids['city_hospital']}"
    before = await fhir_get(client, world, url, "platform")
    assert (
        "telecom" not in before and "line" not in before["address"] and "postalCode" not in before["address"]
    )
    r = await client.patch(
        f"/v1/organisations/{world.ids['city_hospital']}", json=CONTACT, headers=world.auth("city_hospital")
    )
    assert r.status_code == 200, r.text
    location = await fhir_get(client, world, url, "platform")
    assert location["telecom"] == [{"system": "phone", "value": CONTACT["phone"], "use": "work"}]
    assert location["address"] == {
        "use": "work",
        "line": [CONTACT["address_line"]],
        "state": "安徽省",
        "city": "合肥市",
        "district": "蜀山区",
        "postalCode": "230001",
        "country": "CN",
    }
    [searched] = await search_all(
        client, world, "/fhir/Location", "platform", _id=str(world.ids["city_hospital"])
    )
    assert searched == location


async def test_r19_free_slots_carry_the_regions_booking_deep_link(client, world, pool):
    """The SMART booking-deep-link extension, from the region's URL template: only on free slots, and
    the most specific division with settings decides."""
    slots = await search_all(client, world, "/fhir/Slot", "platform", _count=500)
    assert all(ext(s, BOOKING_DEEP_LINK) is None for s in slots)  # no template configured: no link

    async def put(region: str, template: str) -> None:
        body = {"booking_link_template": template}
        r = await client.put(
            f"/v1/regions/{region}/notice-settings", json=body, headers=world.auth("commission")
        )
        assert r.status_code == 200, r.text

    await put(
        "340100", "https://fd.hefei.example.cn/book/{hospital_code}?slot={slot_id}&schedule={schedule_id}"
    )
    await put("340102", "https://yaohai.example.cn/b?loc={location_id}&slot={slot_id}")
    slots = await search_all(client, world, "/fhir/Slot", "platform", _count=500)
    schedules = {
        s["id"]: s for s in await search_all(client, world, "/fhir/Schedule", "platform", _count=500)
    }
    seen = set()
    for s in slots:
        link = ext(s, BOOKING_DEEP_LINK)
        if s["status"] != "free":
            assert link is None, s
            continue
        schedule_id = s["schedule"]["reference"].removeprefix("Schedule/")
        location = schedules[schedule_id]["actor"][0]["reference"].removeprefix("Location/")
        if location == str(world.ids["district_hospital"]):  # 340102 has its own row
            assert link == f"https://yaohai.example.cn/b?loc={location}&slot={s['id']}"
        else:
            assert link == f"https://fd.hefei.example.cn/book/H-CITY?slot={s['id']}&schedule={schedule_id}"
        seen.add(location)
        assert "booking-phone" not in str(s)
    assert seen == {str(world.ids["city_hospital"]), str(world.ids["district_hospital"])}
    read = await fhir_get(client, world, f"/fhir/Slot/{slots[0]['id']}", "platform")
    assert read == slots[0]


async def test_r19_slot_status_follows_the_pool_window(client, world, clock, db, pool):
    slots = {s["id"]: s for s in await search_all(client, world, "/fhir/Slot", "city_hospital", _count=500)}
    rows = await db_slots(db, "city_hospital", world)
    assert set(slots) == {str(s.id) for s, _ in rows}
    now = clock.now()
    for row, cs in rows:
        resource = slots[str(row.id)]
        assert resource["schedule"]["reference"] == f"Schedule/{cs.id}"
        assert datetime.fromisoformat(resource["start"]) == row.starts_at
        if row.status == "booked":
            expected = "busy"
        elif row.status == "reserved" and row.pool_opens_at <= now < row.public_at:
            expected = "free"
        else:
            expected = "busy-unavailable"
        assert resource["status"] == expected, (row.status, cs.service_date)
        held = row.status in ("reserved", "booked")
        assert ext(resource, POOL_RESERVED) is (True if held else None)
        if held:
            assert datetime.fromisoformat(ext(resource, PUBLIC_AT)) == row.public_at
    statuses = [slots[str(s.id)]["status"] for s, _ in rows]
    assert statuses.count("busy") == 1 and statuses.count("free") >= 1
    assert slots[str(pool["booked_slot"])]["status"] == "busy"
    # S2's reserved slots become free when its window opens.
    later = [s for s, cs in rows if cs.service_date == LATER and s.status == "reserved"]
    assert later and all(slots[str(s.id)]["status"] == "busy-unavailable" for s in later)
    clock.set(later[0].pool_opens_at)
    again = await fhir_get(client, world, f"/fhir/Slot/{later[0].id}", "city_hospital")
    assert again["status"] == "free"


async def test_r19_slot_search_by_schedule_start_and_status(client, world, clock, db, pool):
    rows = await db_slots(db, "city_hospital", world)
    s1 = next(cs for _, cs in rows if cs.service_date == DAY)
    by_schedule = await search_all(client, world, "/fhir/Slot", "platform", schedule=f"Schedule/{s1.id}")
    assert [s["id"] for s in by_schedule] == [str(s.id) for s, cs in rows if cs.id == s1.id]

    first, fourth = rows[0][0], rows[3][0]
    window = [f"ge{first.starts_at.astimezone(SHANGHAI).isoformat()}", f"le{fourth.starts_at.isoformat()}"]
    ranged = await search_all(client, world, "/fhir/Slot", "city_hospital", start=window)
    assert [s["id"] for s in ranged] == [str(s.id) for s, _ in rows[:4]]
    after = await search_all(
        client,
        world,
        "/fhir/Slot",
        "city_hospital",
        start=f"gt{first.starts_at.isoformat()}",
        schedule=str(s1.id),
    )
    assert [s["id"] for s in after] == [str(s.id) for s, cs in rows[1:] if cs.id == s1.id]
    whole_day = await search_all(client, world, "/fhir/Slot", "city_hospital", start=LATER.isoformat())
    assert [s["id"] for s in whole_day] == [str(s.id) for s, cs in rows if cs.service_date == LATER]

    free = await search_all(client, world, "/fhir/Slot", "chc_a", status="free")
    bookable = await pool_slots(client, world)
    assert sorted(int(s["id"]) for s in free) == sorted(s["slot_id"] for s in bookable)
    busy = await search_all(client, world, "/fhir/Slot", "city_hospital", status="busy,free")
    assert {s["status"] for s in busy} == {"busy", "free"}
    assert str(pool["booked_slot"]) in {s["id"] for s in busy}


async def test_r19_paging_follows_next_links_without_gaps_or_duplicates(client, world, db, pool):
    everything = await search_all(client, world, "/fhir/Slot", "platform", _count=500)
    paged = await search_all(client, world, "/fhir/Slot", "platform", _count=7)
    ids = [s["id"] for s in paged]
    assert len(ids) == len(set(ids)) == len(everything) > 7
    assert ids == [s["id"] for s in everything]
    assert set(ids) == {str(s.id) for s, _ in await db_slots(db)}
    first = await fhir_get(client, world, "/fhir/Slot", "platform", _count=7, status="busy-unavailable")
    [next_url] = [link["url"] for link in first["link"] if link["relation"] == "next"]
    assert "status=busy-unavailable" in next_url and "_count=7" in next_url


async def test_r19_schedule_search_by_actor_and_date(client, world, db, pool):
    rows = await db_slots(db, "city_hospital", world)
    found = await search_all(
        client, world, "/fhir/Schedule", "platform", actor=f"Location/{world.ids['city_hospital']}"
    )
    assert {s["id"] for s in found} == {str(cs.id) for _, cs in rows}
    on_day = await search_all(client, world, "/fhir/Schedule", "platform", date=LATER.isoformat())
    assert [s["id"] for s in on_day] == sorted({str(cs.id) for _, cs in rows if cs.service_date == LATER})
    from_later = await search_all(client, world, "/fhir/Schedule", "platform", date=f"ge{LATER.isoformat()}")
    assert [s["id"] for s in from_later] == [s["id"] for s in on_day]


async def test_r19_hospital_reads_only_its_own_schedules_and_slots(client, world, db, pool):
    own = await search_all(client, world, "/fhir/Slot", "district_hospital")
    assert {s["id"] for s in own} == {str(s.id) for s, _ in await db_slots(db, "district_hospital", world)}
    locations = await search_all(client, world, "/fhir/Location", "district_hospital")
    assert [loc["id"] for loc in locations] == [str(world.ids["district_hospital"])]
    body = await fhir_get(client, world, f"/fhir/Slot/{pool['booked_slot']}", "district_hospital", expect=404)
    assert outcome_code(body) == "slot_not_found"
    # The far primary institution (another city) may book no hospital here, so it reads none.
    assert await search_all(client, world, "/fhir/Slot", "chc_far") == []


async def test_r19_appointment_only_for_the_hospital_and_the_referrer(client, world, db, pool):
    ref = pool["reference"]
    seen = await fhir_get(client, world, f"/fhir/Appointment/{ref}", "city_hospital")
    assert seen["status"] == "booked"
    assert seen["slot"] == [{"reference": f"Slot/{pool['booked_slot']}"}]
    patient = next(p for p in seen["participant"] if p["actor"].get("type") == "Patient")
    assert patient["actor"]["display"] == "张*"
    for third in ("chc_b", "district_hospital"):
        body = await fhir_get(client, world, f"/fhir/Appointment/{ref}", third, expect=404)
        assert outcome_code(body) == "referral_not_found"
        assert await search_all(client, world, "/fhir/Appointment", third) == []
    body = await fhir_get(client, world, f"/fhir/Appointment/{ref}", "platform", expect=403)
    assert outcome_code(body) == "wrong_role"
    r = await client.get(f"/fhir/Appointment/{ref}", headers=world.auth("chc_a"))
    id_number = synthetic_id("340102", seq=1)
    assert id_number not in r.text and id_number[1:-1] not in r.text
    code = (await client.get(f"/v1/referrals/{ref}", headers=world.auth("chc_a"))).json()["verification_code"]
    assert code not in r.text
    reads = await db.run(
        lambda s: s.scalars(
            select(AuditEntry).where(AuditEntry.action == "referral.read").order_by(AuditEntry.id)
        )
    )
    assert [(e.actor_org_id, e.detail["via"]) for e in reads] == [
        (world.ids["city_hospital"], "fhir"),
        (world.ids["chc_a"], "fhir"),
        (world.ids["chc_a"], "api"),  # the verification code read above
    ]


async def test_r19_cancelled_referral_is_a_cancelled_appointment(client, world, pool):
    ref = pool["reference"]
    r = await client.post(
        f"/v1/referrals/{ref}/cancel", json={"reason": "家中有事"}, headers=world.auth("chc_a")
    )
    assert r.status_code == 200, r.text
    [cancelled] = await search_all(client, world, "/fhir/Appointment", "chc_a", status="cancelled")
    assert cancelled["status"] == "cancelled"
    assert cancelled["cancelationReason"]["text"] == "家中有事"
    assert await search_all(client, world, "/fhir/Appointment", "chc_a", status="booked") == []
    slot = await fhir_get(client, world, f"/fhir/Slot/{pool['booked_slot']}", "chc_a")
    assert slot["status"] == "free"


@pytest.mark.parametrize(
    ("path", "params", "who", "status", "code"),
    [
        ("/fhir/Slot", {}, "", 401, "missing_credentials"),
        ("/fhir/Slot", {"_count": "0"}, "platform", 400, "invalid_search_parameter"),
        ("/fhir/Slot", {"start": "soon"}, "platform", 400, "invalid_search_parameter"),
        ("/fhir/Slot", {"start": "ne2026-03-10"}, "platform", 400, "unsupported_search_prefix"),
        ("/fhir/Slot", {"status": "open"}, "platform", 400, "invalid_search_parameter"),
        ("/fhir/Slot", {"schedule": "Location/1"}, "platform", 400, "invalid_search_parameter"),
        ("/fhir/Slot", {"_cursor": "bm9wZQ"}, "platform", 400, "invalid_cursor"),
        ("/fhir/Slot/abc", {}, "platform", 404, "slot_not_found"),
        ("/fhir/Slot/999999", {}, "platform", 404, "slot_not_found"),
        ("/fhir/Schedule/999999", {}, "platform", 404, "session_not_found"),
        ("/fhir/Location/999999", {}, "platform", 404, "hospital_not_found"),
        ("/fhir/Appointment/RNOSUCH", {}, "chc_a", 404, "referral_not_found"),
        ("/fhir/Patient", {}, "platform", 404, "not_found"),
        ("/fhir/bulk/Patient.ndjson", {}, "platform", 404, "not_found"),
        ("/fhir/$bulk-publish", {}, "chc_a", 403, "wrong_role"),
    ],
)
async def test_r19_errors_are_operation_outcomes(client, world, path, params, who, status, code):
    body = await fhir_get(client, world, path, who, expect=status, **params)
    assert outcome_code(body) == code


async def test_r19_fhir_is_read_only(client, world):
    r = await client.post("/fhir/Slot", json={"resourceType": "Slot"}, headers=world.auth("chc_a"))
    assert r.status_code == 405
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    validate(body)
    assert outcome_code(body) == "method_not_allowed"


# --- resource kinds (R18): examinations and beds ------------------------------------------------


def codings(concepts: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for concept in concepts for c in concept.get("coding", [])}


@pytest.fixture
async def kinds(client, world, clock, pool):
    """Beside ``pool``, the city hospital's CT pool (own district only) and its city-wide bed pool.

    A CT and an MRI block (both under the examination policy) and a ward's bed day, all on DAY.
    chc_b (the hospital's district) books a CT slot; chc_a (another district of the city) may book
    the hospital's visits and beds but not its examinations.
    """
    await publish_and_assign(client, world, kind_policy("test-ct", "examination", scope="jurisdiction"))
    await publish_and_assign(client, world, kind_policy("test-beds", "bed", disease_prefixes=STROKE_AND_MI))
    results = await push(
        client,
        world,
        [exam_item("CT1", slots=8), exam_item("MR1", modality="MRI", slots=4), bed_item("W1", beds=10)],
    )
    assert [r["result"] for r in results] == ["created"] * 3
    await sign(client, world, [7], institution="P-B", region="340104")
    [ct, *_] = await pool_slots(client, world, who="chc_b", resource_kind="examination", modality="CT")
    r = await client.post(
        "/v1/referrals",
        json=booking(ct["slot_id"], 7, clock=clock, region="340104", diagnoses=["R91"]),
        headers=world.auth("chc_b"),
    )
    assert r.status_code == 201, r.text
    [bed, *_] = await pool_slots(client, world, who="chc_a", resource_kind="bed")
    r2 = await client.post(
        "/v1/referrals",
        json=booking(bed["slot_id"], 2, clock=clock, diagnoses=["I63.9"]),
        headers=world.auth("chc_a"),
    )
    assert r2.status_code == 201, r2.text
    return pool | {
        "ct_slot": ct["slot_id"],
        "ct_reference": r.json()["reference"],
        "bed_slot": bed["slot_id"],
        "bed_reference": r2.json()["reference"],
    }


async def test_r18_fhir_serves_every_kind_and_marks_it(client, world, db, kinds):
    rows = await db_slots(db)
    sessions = {str(cs.id): cs for _, cs in rows}
    assert {cs.resource_kind for cs in sessions.values()} == {"outpatient", "examination", "bed"}

    schedules = {s["id"]: s for s in await search_all(client, world, "/fhir/Schedule", "platform")}
    assert set(schedules) == set(sessions)
    for sid, schedule in schedules.items():
        cs = sessions[sid]
        assert ext(schedule, RESOURCE_KIND) == cs.resource_kind
        assert (KIND, cs.resource_kind) in codings(schedule["serviceType"])
        # SMART Scheduling Links: one actor, the Location; the doctor rides in an extension.
        assert schedule["actor"] == [{"reference": f"Location/{cs.hospital_id}"}]
        assert await fhir_get(client, world, f"/fhir/Schedule/{sid}", "platform") == schedule
        category = {c["code"] for c in schedule["serviceCategory"][0]["coding"]}
        if cs.resource_kind == "outpatient":
            assert session_doctor(schedule) == {"name": "王医生", "title": "associate_chief"}
            assert (ACT_CODE, "AMB") in codings(schedule["serviceType"])
            assert category == {"35"}
        elif cs.resource_kind == "examination":
            assert session_doctor(schedule) is None  # no doctor named for the machine
            dicom = {"CT": "CT", "MRI": "MR"}[cs.modality]
            assert {(MODALITY, cs.modality), (DICOM, dicom)} <= codings(schedule["serviceType"])
            assert f"{cs.modality}检查" in {c.get("text") for c in schedule["serviceType"]}
            assert category == {"30"}  # Specialist Radiology/Imaging
        else:
            assert session_doctor(schedule) is None
            assert (ACT_CODE, "IMP") in codings(schedule["serviceType"])
            [ward] = [c for c in schedule["serviceType"] if c.get("text") == "心内科一病区"]
            assert ward["coding"][0]["code"] == "W-CARD-1"
            assert "心内科一病区" in schedule["comment"]
            assert category == {"35"}

    slots = {s["id"]: s for s in await search_all(client, world, "/fhir/Slot", "platform", _count=500)}
    assert set(slots) == {str(s.id) for s, _ in rows}
    for row, cs in rows:
        resource = slots[str(row.id)]
        assert ext(resource, RESOURCE_KIND) == row.resource_kind == cs.resource_kind
        assert resource["serviceType"] == schedules[str(cs.id)]["serviceType"][:-1]  # all but the period
        assert resource["comment"] == (
            f"Bed {row.number}" if cs.resource_kind == "bed" else f"No. {row.number}"
        )
    for key in ("ct_slot", "bed_slot"):
        read = await fhir_get(client, world, f"/fhir/Slot/{kinds[key]}", "platform")
        assert read == slots[str(kinds[key])] and read["status"] == "busy"


async def test_r18_fhir_scope_is_per_hospital_and_kind(client, world, db, kinds):
    """chc_a may book the city hospital's visits and beds but not its CT pool: FHIR shows it the same."""
    city = {str(r.id): r.resource_kind for r, _ in await db_slots(db, "city_hospital", world)}
    at_city = f"Location/{world.ids['city_hospital']}"
    for who, kinds_seen in (
        ("chc_a", {"outpatient", "bed"}),
        ("chc_b", {"outpatient", "examination", "bed"}),
    ):
        slots = await search_all(client, world, "/fhir/Slot", who, _count=500)
        expected = {sid for sid, kind in city.items() if kind in kinds_seen}
        assert {s["id"] for s in slots if s["id"] in city} == expected, who
        free = await search_all(client, world, "/fhir/Slot", who, status="free", _count=500)
        bookable = await pool_slots(client, world, who)
        assert sorted(int(s["id"]) for s in free) == sorted(s["slot_id"] for s in bookable)
        schedules = await search_all(client, world, "/fhir/Schedule", who)
        assert {
            ext(s, RESOURCE_KIND) for s in schedules if s["actor"][0]["reference"] == at_city
        } == kinds_seen
    ct_schedule = (await fhir_get(client, world, f"/fhir/Slot/{kinds['ct_slot']}", "chc_b"))["schedule"][
        "reference"
    ]
    for path, code in (
        (f"/fhir/Slot/{kinds['ct_slot']}", "slot_not_found"),
        (f"/fhir/{ct_schedule}", "session_not_found"),
    ):
        body = await fhir_get(client, world, path, "chc_a", expect=404)
        assert outcome_code(body) == code
    assert await search_all(client, world, "/fhir/Schedule", "chc_a", **{"service-type": "examination"}) == []
    # The hospital itself reads every kind of its own.
    own = await search_all(client, world, "/fhir/Slot", "city_hospital", _count=500)
    assert {ext(s, RESOURCE_KIND) for s in own} == {"outpatient", "examination", "bed"}


async def test_r18_fhir_service_type_search(client, world, db, kinds):
    rows = await db_slots(db)

    async def slot_ids(who: str = "platform", **params: Any) -> set[str]:
        found = await search_all(client, world, "/fhir/Slot", who, _count=500, **params)
        return {s["id"] for s in found}

    def where(test: Any) -> set[str]:
        return {str(s.id) for s, cs in rows if test(cs)}

    exams = where(lambda cs: cs.resource_kind == "examination")
    assert exams and await slot_ids(**{"service-type": "examination"}) == exams
    assert await slot_ids(**{"service-type": "CT"}) == where(lambda cs: cs.modality == "CT")
    mri = where(lambda cs: cs.modality == "MRI")
    assert mri and await slot_ids(**{"service-type": f"{DICOM}|MR"}) == mri
    assert await slot_ids(**{"service-type": ["examination", "MRI"]}) == mri  # repeated: AND
    assert await slot_ids(**{"service-type": ["examination", "bed"]}) == set()
    beds = where(lambda cs: cs.resource_kind == "bed")
    assert beds and await slot_ids(**{"service-type": f"{ACT_CODE}|IMP"}) == beds
    visits = where(lambda cs: cs.resource_kind == "outpatient")
    assert await slot_ids(**{"service-type": "outpatient,bed"}) == visits | beds  # comma: OR
    assert await slot_ids(**{"service-type": "AMB"}) == visits | exams
    # Combined with scope and status: what chc_a may book in the ward right now.
    free_beds = await slot_ids("chc_a", status="free", **{"service-type": f"{KIND}|bed"})
    assert free_beds == {str(s["slot_id"]) for s in await pool_slots(client, world, resource_kind="bed")}
    assert free_beds and await slot_ids("chc_a", **{"service-type": "CT"}) == set()

    [ct_schedule] = await search_all(client, world, "/fhir/Schedule", "platform", **{"service-type": "CT"})
    assert ct_schedule["id"] == str(next(cs.id for _, cs in rows if cs.modality == "CT"))
    both = await search_all(client, world, "/fhir/Schedule", "platform", **{"service-type": "CT,MRI"})
    assert sorted(ext(s, RESOURCE_KIND) for s in both) == ["examination", "examination"]

    for bad in ("mri", f"{KIND}|CT", "|CT", "CT scan"):
        body = await fhir_get(client, world, "/fhir/Slot", "platform", expect=400, **{"service-type": bad})
        assert outcome_code(body) == "invalid_search_parameter", bad


async def test_r18_fhir_examination_appointment_has_no_doctor(client, world, db, kinds):
    ref = kinds["ct_reference"]
    seen = await fhir_get(client, world, f"/fhir/Appointment/{ref}", "chc_b")
    assert seen == await fhir_get(client, world, f"/fhir/Appointment/{ref}", "city_hospital")
    assert seen["status"] == "booked"
    assert ext(seen, RESOURCE_KIND) == "examination"
    assert seen["slot"] == [{"reference": f"Slot/{kinds['ct_slot']}"}]
    types = [p.get("type", [{}])[0].get("coding", [{}])[0].get("code") for p in seen["participant"]]
    assert "PPRF" not in types  # no doctor is booked for a machine
    assert [p["actor"].get("type") for p in seen["participant"]] == ["Patient", "Practitioner", None]
    assert {(MODALITY, "CT"), (DICOM, "CT"), (KIND, "examination")} <= codings(seen["serviceType"])
    assert seen["serviceCategory"][0]["coding"][0] == {
        "system": SERVICE_CATEGORY,
        "code": "30",
        "display": "Specialist Radiology/Imaging",
    }
    assert "CT检查" in seen["description"]
    # chc_a did not make it and may not read the CT pool.
    assert outcome_code(await fhir_get(client, world, f"/fhir/Appointment/{ref}", "chc_a", expect=404)) == (
        "referral_not_found"
    )

    bed = await fhir_get(client, world, f"/fhir/Appointment/{kinds['bed_reference']}", "chc_a")
    assert ext(bed, RESOURCE_KIND) == "bed"
    assert (ACT_CODE, "IMP") in codings(bed["serviceType"])
    assert "心内科一病区" in bed["description"] and "Bed " in bed["description"]
    mine = await search_all(client, world, "/fhir/Appointment", "chc_a", _count=500)
    assert {ext(a, RESOURCE_KIND) for a in mine} == {"outpatient", "bed"}
