"""SMART Scheduling Links bulk publication: the manifest and its NDJSON files, checked against the database."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from service.models.slots import ClinicSession, Slot
from tests.factories import add_wuhu_key, booking, pool_slots
from tests.test_fhir import BOOKING_DEEP_LINK, LATER, RESOURCE_KIND, ext, kinds, pool, validate

__all__ = ["kinds", "pool"]  # the fixtures, shared with the FHIR view tests


async def manifest(client, world, who: str = "platform", **headers: str) -> tuple[int, dict[str, Any], str]:
    r = await client.get("/fhir/$bulk-publish", headers=world.auth(who) | headers)
    return r.status_code, (r.json() if r.status_code == 200 else {}), r.headers.get("etag", "")


async def published(client, world, body: dict[str, Any], etag: str) -> dict[str, list[dict[str, Any]]]:
    """Every NDJSON file of the manifest, each line parsed and validated."""
    files: dict[str, list[dict[str, Any]]] = {}
    for output in body["output"]:
        r = await client.get(output["url"], headers=world.auth("platform"))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/fhir+ndjson")
        assert r.headers["etag"] == etag
        lines = [json.loads(line) for line in r.text.splitlines()]
        assert r.text == "".join(
            json.dumps(x, ensure_ascii=False, separators=(",", ":")) + "\n" for x in lines
        )
        for resource in lines:
            assert resource["resourceType"] == output["type"]
            validate(resource)
        files[output["type"]] = lines
    return files


async def expected_slots(db, now: datetime) -> dict[str, str]:
    """Slot id -> status the publication should show, straight from the rows."""

    async def q(session):
        stmt = select(Slot, ClinicSession).join(ClinicSession, ClinicSession.id == Slot.session_id)
        return (await session.execute(stmt)).all()

    expected = {}
    for slot, cs in await db.run(q):
        if cs.status != "active" or slot.starts_at <= now:
            continue
        if slot.status == "booked":
            expected[str(slot.id)] = "busy"
        elif slot.status == "reserved" and slot.pool_opens_at <= now < slot.public_at:
            expected[str(slot.id)] = "free"
    return expected


async def test_r19_bulk_manifest_and_files_match_the_database(client, world, clock, db, pool):
    status, body, etag = await manifest(client, world)
    assert status == 200
    assert datetime.fromisoformat(body["transactionTime"]) == clock.now()
    assert body["request"].endswith("/fhir/$bulk-publish")
    assert [o["type"] for o in body["output"]] == ["Location", "Schedule", "Slot"]
    assert body["error"] == []
    files = await published(client, world, body, etag)

    slots = {s["id"]: s["status"] for s in files["Slot"]}
    assert slots == await expected_slots(db, clock.now())
    assert "busy" in slots.values() and "free" in slots.values()
    assert slots[str(pool["booked_slot"])] == "busy"
    schedules = {s["id"]: s for s in files["Schedule"]}
    assert {s["schedule"]["reference"] for s in files["Slot"]} == {f"Schedule/{i}" for i in schedules}
    locations = {loc["id"] for loc in files["Location"]}
    assert {s["actor"][0]["reference"] for s in schedules.values()} == {f"Location/{i}" for i in locations}
    assert locations == {str(world.ids["city_hospital"]), str(world.ids["district_hospital"])}


async def test_r19_bulk_is_rebuilt_only_when_rows_or_windows_move(client, world, clock, db, pool):
    _, first, etag = await manifest(client, world)
    clock.advance(timedelta(minutes=5))
    _, again, same = await manifest(client, world)
    assert (same, again["transactionTime"]) == (etag, first["transactionTime"])
    assert (await manifest(client, world, **{"If-None-Match": etag}))[0] == 304
    r = await client.get("/fhir/bulk/Slot.ndjson", headers=world.auth("platform") | {"If-None-Match": etag})
    assert r.status_code == 304

    # A booking changes the rows: a new generation shows the slot busy.
    [slot, *_] = await pool_slots(client, world)
    r = await client.post(
        "/v1/referrals", json=booking(slot["slot_id"], 2, clock=clock), headers=world.auth("chc_a")
    )
    assert r.status_code == 201, r.text
    _, booked, booked_etag = await manifest(client, world)
    assert booked_etag != etag
    assert datetime.fromisoformat(booked["transactionTime"]) == clock.now()
    files = await published(client, world, booked, booked_etag)
    assert {s["id"]: s["status"] for s in files["Slot"]}[str(slot["slot_id"])] == "busy"

    # Time alone opens LATER's window: the next generation publishes those slots as free.
    async def later_reserved(session):
        stmt = (
            select(Slot)
            .join(ClinicSession, ClinicSession.id == Slot.session_id)
            .where(ClinicSession.service_date == LATER, Slot.status == "reserved")
        )
        return list(await session.scalars(stmt))

    later = await db.run(later_reserved)
    assert later
    published_before = {s["id"] for s in files["Slot"]}
    assert not published_before & {str(s.id) for s in later}
    clock.set(later[0].pool_opens_at)
    _, opened, opened_etag = await manifest(client, world)
    assert opened_etag != booked_etag
    files = await published(client, world, opened, opened_etag)
    slots = {s["id"]: s["status"] for s in files["Slot"]}
    assert all(slots[str(s.id)] == "free" for s in later)
    assert slots == await expected_slots(db, clock.now())


async def test_r19_bulk_needs_a_platform_or_commission_key(client, world, pool):
    r = await client.get("/fhir/$bulk-publish")
    assert r.status_code == 401
    assert r.json()["resourceType"] == "OperationOutcome"
    for who in ("chc_a", "city_hospital"):
        r = await client.get("/fhir/bulk/Slot.ndjson", headers=world.auth(who))
        assert r.status_code == 403
    status, body, _ = await manifest(client, world, who="commission")
    assert status == 200 and body["requiresAccessToken"] is True


async def test_r19_platforms_read_their_own_region_only(client, world, clock, crypto, db, pool):
    """A platform of another city (Wuhu) sees none of Hefei's hospitals, in search or in bulk."""

    await add_wuhu_key(world, crypto, "wuhu", "platform")
    status, body, etag = await manifest(client, world, who="wuhu")
    assert status == 200
    for output in body["output"]:
        r = await client.get(output["url"], headers=world.auth("wuhu"))
        assert (r.status_code, r.text, r.headers["etag"]) == (200, "", etag)
    r = await client.get("/fhir/Slot", headers=world.auth("wuhu"))
    assert r.status_code == 200
    assert "entry" not in r.json()
    r = await client.get(f"/fhir/Slot/{pool['booked_slot']}", headers=world.auth("wuhu"))
    assert r.status_code == 404
    # The Hefei platform, whose region holds both hospitals, gets a different generation.
    assert (await manifest(client, world))[2] != etag


async def test_r18_bulk_publishes_examinations_and_beds_with_their_kind(client, world, clock, db, kinds):
    status, body, etag = await manifest(client, world)
    assert status == 200
    files = await published(client, world, body, etag)
    slots = {s["id"]: s for s in files["Slot"]}
    assert {k: s["status"] for k, s in slots.items()} == await expected_slots(db, clock.now())

    async def kind_of(session):
        rows = await session.execute(select(Slot.id, Slot.resource_kind, Slot.session_id))
        return {str(i): (k, str(sid)) for i, k, sid in rows}

    kinds_by_slot = await db.run(kind_of)
    assert {ext(s, RESOURCE_KIND) for s in slots.values()} == {"outpatient", "examination", "bed"}
    for sid, resource in slots.items():
        assert ext(resource, RESOURCE_KIND) == kinds_by_slot[sid][0]
    assert slots[str(kinds["ct_slot"])]["status"] == slots[str(kinds["bed_slot"])]["status"] == "busy"
    schedules = {s["id"]: s for s in files["Schedule"]}
    assert {ext(s, RESOURCE_KIND) for s in schedules.values()} == {"outpatient", "examination", "bed"}
    for resource in slots.values():
        schedule = schedules[resource["schedule"]["reference"].removeprefix("Schedule/")]
        assert ext(schedule, RESOURCE_KIND) == ext(resource, RESOURCE_KIND)
        # SMART Scheduling Links: every Schedule has one actor, its Location, whatever its kind.
        [actor] = schedule["actor"]
        assert set(actor) == {"reference"} and actor["reference"].startswith("Location/")
        if ext(schedule, RESOURCE_KIND) != "outpatient":
            assert actor == {"reference": f"Location/{world.ids['city_hospital']}"}

    # Cancelling the CT booking changes only an examination slot: a new generation shows it free.
    r = await client.post(
        f"/v1/referrals/{kinds['ct_reference']}/cancel",
        json={"reason": "已在他院检查"},
        headers=world.auth("chc_b"),
    )
    assert r.status_code == 200, r.text
    _, after, after_etag = await manifest(client, world)
    assert after_etag != etag
    files = await published(client, world, after, after_etag)
    assert {s["id"]: s["status"] for s in files["Slot"]}[str(kinds["ct_slot"])] == "free"


async def test_r19_bulk_carries_contact_and_deep_links_and_moves_with_them(client, world, clock, db, pool):
    """A hospital's contact data and its region's deep-link template are in the files, and changing
    either makes a new generation: they are part of what the ETag describes."""
    _, body, etag = await manifest(client, world)
    files = await published(client, world, body, etag)
    assert all(BOOKING_DEEP_LINK not in str(s) for s in files["Slot"])
    assert all("telecom" not in loc for loc in files["Location"])

    contact = {
        "address_line": "安徽省合肥市蜀山区淮河路390号",
        "postal_code": "230001",
        "phone": "0551-62283114",
    }
    r = await client.patch(
        f"/v1/organisations/{world.ids['city_hospital']}", json=contact, headers=world.auth("city_hospital")
    )
    assert r.status_code == 200, r.text
    _, body, etag_contact = await manifest(client, world)
    assert etag_contact != etag
    files = await published(client, world, body, etag_contact)
    [city] = [loc for loc in files["Location"] if loc["id"] == str(world.ids["city_hospital"])]
    assert city["telecom"] == [{"system": "phone", "value": "0551-62283114", "use": "work"}]
    assert city["address"]["line"] == [contact["address_line"]] and city["address"]["postalCode"] == "230001"

    template = "https://fd.hefei.example.cn/book?slot={slot_id}&h={hospital_code}"
    r = await client.put(
        "/v1/regions/340100/notice-settings",
        json={"booking_link_template": template},
        headers=world.auth("commission"),
    )
    assert r.status_code == 200, r.text
    _, body, etag_link = await manifest(client, world)
    assert etag_link not in (etag, etag_contact)
    files = await published(client, world, body, etag_link)
    codes = {str(world.ids["city_hospital"]): "H-CITY", str(world.ids["district_hospital"]): "H-DIST"}
    schedules = {s["id"]: s["actor"][0]["reference"].removeprefix("Location/") for s in files["Schedule"]}
    for resource in files["Slot"]:
        link = ext(resource, BOOKING_DEEP_LINK)
        if resource["status"] == "free":
            hospital = codes[schedules[resource["schedule"]["reference"].removeprefix("Schedule/")]]
            assert link == f"https://fd.hefei.example.cn/book?slot={resource['id']}&h={hospital}"
        else:
            assert link is None  # a busy slot cannot be booked: no link to a dead end
    assert "free" in {s["status"] for s in files["Slot"]}
    # Unchanged data and settings: the same generation.
    assert (await manifest(client, world))[2] == etag_link
