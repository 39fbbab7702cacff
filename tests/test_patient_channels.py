"""What reaches the patient, as data: a hospital's address and phone in the registry, and a region's
SMS templates and booking deep links (docs/slip.md, docs/fhir.md). Scoped and audited."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from service.models.audit import AuditEntry
from service.registry.service import booking_link
from tests.factories import add_jiangsu

CONTACT = {"address_line": "安徽省合肥市蜀山区淮河路390号", "postal_code": "230001", "phone": "0551-62283114"}


async def _audit(db, action: str) -> list[AuditEntry]:
    return list(
        await db.run(
            lambda s: s.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id))
        )
    )


async def test_a_hospital_sets_its_own_contact_and_the_trail_says_what_changed(client, world, db):
    url = f"/v1/organisations/{world.ids['city_hospital']}"
    r = await client.patch(url, json=CONTACT, headers=world.auth("city_hospital"))
    assert r.status_code == 200, r.text
    assert {k: r.json()[k] for k in CONTACT} == CONTACT
    # A merge patch: what is left out stays, null clears.
    r = await client.patch(url, json={"phone": None}, headers=world.auth("city_hospital"))
    assert r.status_code == 200
    assert r.json()["phone"] is None and r.json()["address_line"] == CONTACT["address_line"]
    listed = (await client.get("/v1/organisations", headers=world.auth("chc_a"))).json()["items"]
    [city] = [o for o in listed if o["id"] == world.ids["city_hospital"]]
    assert city["postal_code"] == "230001" and city["phone"] is None
    entries = await _audit(db, "organisation.contact")
    assert [(e.actor_org_id, e.hospital_id) for e in entries] == [(world.ids["city_hospital"],) * 2] * 2
    assert entries[0].detail["before"] == dict.fromkeys(CONTACT)
    assert entries[0].detail["after"] == CONTACT
    assert entries[1].detail["after"] == CONTACT | {"phone": None}


async def test_the_commission_sets_contact_for_its_region_only(client, world, crypto):
    r = await client.patch(
        f"/v1/organisations/{world.ids['district_hospital']}", json=CONTACT, headers=world.auth("commission")
    )
    assert r.status_code == 200, r.text
    await add_jiangsu(world, crypto)
    r = await client.patch(
        f"/v1/organisations/{world.ids['district_hospital']}",
        json={"phone": "025-1234567"},
        headers=world.auth("jiangsu_commission"),
    )
    assert r.status_code == 404
    assert r.json()["code"] == "organisation_not_found"


@pytest.mark.parametrize(("who", "status"), [("district_hospital", 404), ("chc_a", 403), ("platform", 403)])
async def test_no_one_else_sets_a_hospitals_contact(client, world, who, status):
    r = await client.patch(
        f"/v1/organisations/{world.ids['city_hospital']}", json={"phone": "110"}, headers=world.auth(who)
    )
    assert r.status_code == status, r.text


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"postal_code": "23000"},
        {"postal_code": "2300011"},
        {"phone": "call us"},
        {"address_line": "一行\n两行"},
        {"address_line": "路" * 201},
    ],
)
async def test_contact_that_a_slip_or_fhir_cannot_carry_is_refused(client, world, body):
    r = await client.patch(
        f"/v1/organisations/{world.ids['city_hospital']}", json=body, headers=world.auth("city_hospital")
    )
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_request"


SETTINGS = {
    "sms_sign_name": "合肥卫健",
    "sms_template_booked": "SMS_480215001",
    "sms_template_cancelled": "1234567",
    "booking_link_template": "https://fd.hefei.example.cn/book?slot={slot_id}",
}


async def test_notice_settings_apply_below_the_division_that_sets_them(client, world, db):
    r = await client.get("/v1/regions/340102/notice-settings", headers=world.auth("chc_a"))
    assert r.status_code == 200
    assert r.json()["decided_by"] is None and r.json()["sms_template_booked"] is None
    r = await client.put(
        "/v1/regions/340100/notice-settings", json=SETTINGS, headers=world.auth("commission")
    )
    assert r.status_code == 200, r.text
    assert r.json()["decided_by"] == "340100"
    below = (await client.get("/v1/regions/340102/notice-settings", headers=world.auth("platform"))).json()
    assert below["decided_by"] == "340100" and {k: below[k] for k in SETTINGS} == SETTINGS
    # A division's own row replaces the whole of its parent's, for it and below it.
    own = {"booking_link_template": "https://yaohai.example.cn/{slot_id}"}
    r = await client.put("/v1/regions/340102/notice-settings", json=own, headers=world.auth("commission"))
    assert r.json()["decided_by"] == "340102" and r.json()["sms_template_booked"] is None
    other = (await client.get("/v1/regions/340104/notice-settings", headers=world.auth("commission"))).json()
    assert other["decided_by"] == "340100"
    entries = await _audit(db, "notice_settings.set")
    assert [e.detail["region_code"] for e in entries] == ["340100", "340102"]
    assert entries[0].detail["before"] is None and entries[0].detail["after"] == SETTINGS


async def test_notice_settings_stay_in_the_commissions_region(client, world, crypto):
    await add_jiangsu(world, crypto)
    r = await client.put(
        "/v1/regions/340100/notice-settings", json=SETTINGS, headers=world.auth("jiangsu_commission")
    )
    assert r.status_code == 403
    assert r.json()["code"] == "region_out_of_scope"
    r = await client.put(
        "/v1/regions/349900/notice-settings", json=SETTINGS, headers=world.auth("commission")
    )
    assert r.status_code == 404
    assert r.json()["code"] == "region_not_found"


@pytest.mark.parametrize(
    "changes",
    [
        {"booking_link_template": "http://fd.hefei.example.cn/book?slot={slot_id}"},  # not https
        {"booking_link_template": "https://fd.hefei.example.cn/book"},  # no {slot_id}
        {"booking_link_template": "https://fd.hefei.example.cn/{slot_id}/{resident}"},  # unknown placeholder
        {"booking_link_template": "https://fd.hefei.example.cn/{slot_id"},  # unbalanced
        {"booking_link_template": "https:///{slot_id}"},  # no host
        {"booking_link_template": "https://fd.hefei.example.cn/{slot_id:>999999999999}"},  # a format spec
        {"booking_link_template": "https://fd.hefei.example.cn/{slot_id!r}"},  # a conversion
        {"booking_link_template": "https://fd.hefei.example.cn:99999/{slot_id}"},  # no such port
        {"sms_sign_name": None},  # a template without the signature it was registered with
        {"sms_sign_name": "【合肥卫健】"},  # the gateway adds the brackets
        {"sms_template_booked": "SMS 1"},
    ],
)
async def test_notice_settings_a_gateway_or_a_client_could_not_use_are_refused(client, world, changes):
    body = SETTINGS | changes
    r = await client.put("/v1/regions/340100/notice-settings", json=body, headers=world.auth("commission"))
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_request"


def test_booking_link_percent_encodes_what_it_substitutes():
    link = booking_link(
        "https://x.example.cn/b/{hospital_code}?slot={slot_id}&s={schedule_id}&l={location_id}",
        slot_id=7,
        schedule_id=3,
        location_id=1,
        hospital_code="H/1 &x",
    )
    assert link == "https://x.example.cn/b/H%2F1%20%26x?slot=7&s=3&l=1"
