"""Every administrative write leaves an audit entry: who, what, before and after, never a secret."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from service.kit.clock import ManualClock
from service.kit.context import Actor
from service.models.audit import AuditEntry
from service.registry.service import create_api_client
from tests.factories import add_jiangsu
from tests.test_authorization import policy_body
from tests.webhook_receiver import Receiver


@pytest.fixture
def receiver(clock: ManualClock) -> Iterator[Receiver]:
    r = Receiver(clock)
    r.start()
    yield r
    r.stop()


async def entries(db, action: str) -> list[AuditEntry]:
    rows = await db.run(
        lambda s: s.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id))
    )
    return list(rows)


async def client_id(client, world, who: str) -> int:
    r = await client.get("/v1/me", headers=world.auth(who))
    value: int = r.json()["client_id"]
    return value


async def only_entry_by(client, world, db, action: str, who: str = "commission") -> AuditEntry:
    """The one entry of ``action`` made through the API, by ``who``'s client."""
    made = [e for e in await entries(db, action) if e.actor_client_id is not None]
    assert len(made) == 1, [e.detail for e in made]
    assert made[0].actor_client_id == await client_id(client, world, who)
    return made[0]


async def test_renaming_a_division_is_audited_with_before_and_after(client, world, db):
    batch = [
        {"code": "340102", "name": "瑶海区（新）", "level": "county", "parent_code": "340100"},
        {"code": "340104", "name": "蜀山区", "level": "county", "parent_code": "340100"},  # unchanged
        {"code": "340103", "name": "庐阳区", "level": "county", "parent_code": "340100"},
    ]
    r = await client.post("/v1/regions", json={"regions": batch}, headers=world.auth("commission"))
    assert r.status_code == 204, r.text
    entry = await only_entry_by(client, world, db, "region.upserted")
    assert entry.actor == "commission"
    assert entry.detail["regions"] == [
        {
            "code": "340102",
            "before": {"name": "瑶海区", "level": "county", "parent_code": "340100"},
            "after": {"name": "瑶海区（新）", "level": "county", "parent_code": "340100"},
        },
        {
            "code": "340103",
            "before": None,
            "after": {"name": "庐阳区", "level": "county", "parent_code": "340100"},
        },
    ]


async def test_creating_an_organisation_is_audited(client, world, db):
    body = {
        "code": "H-NEW",
        "name": "合肥市第二人民医院",
        "kind": "hospital",
        "region_code": "340102",
        "hospital_level": 3,
        "hospital_tier": "city",
    }
    r = await client.post("/v1/organisations", json=body, headers=world.auth("commission"))
    assert r.status_code == 201, r.text
    entry = await only_entry_by(client, world, db, "organisation.created")
    assert (entry.hospital_id, entry.detail["organisation_id"]) == (r.json()["id"], r.json()["id"])
    assert entry.detail["before"] is None
    assert entry.detail["after"]["code"] == "H-NEW"
    assert entry.detail["after"]["region_code"] == "340102"


async def test_creating_an_alliance_is_audited(client, world, db):
    r = await client.post(
        "/v1/alliances",
        json={"name": "瑶海医共体", "lead_hospital_code": "H-DIST", "member_codes": ["P-A", "P-B"]},
        headers=world.auth("commission"),
    )
    assert r.status_code == 201, r.text
    entry = await only_entry_by(client, world, db, "alliance.created")
    assert entry.detail == {
        "alliance_id": r.json()["id"],
        "before": None,
        "after": {
            "name": "瑶海医共体",
            "lead_hospital_id": world.ids["district_hospital"],
            "member_ids": sorted([world.ids["chc_a"], world.ids["chc_b"]]),
        },
    }


async def test_publishing_a_policy_is_audited_with_the_previous_version(client, world, db):
    r = await client.post("/v1/policies", json=policy_body(ratio="0.30"), headers=world.auth("commission"))
    assert r.status_code == 201, r.text
    entry = await only_entry_by(client, world, db, "policy.published")
    assert entry.detail["before"]["version"] == 1
    assert Decimal(entry.detail["before"]["ratio"]) == Decimal("0.20")
    assert (entry.detail["after"]["version"], Decimal(entry.detail["after"]["ratio"])) == (2, Decimal("0.30"))
    assert entry.detail["copied_from"] is None


async def test_a_copy_on_write_is_audited_with_every_hospital_it_moved(client, world, db, crypto):
    await add_jiangsu(world, crypto)
    r = await client.post("/v1/policies", json=policy_body(code="fuzhou"), headers=world.auth("commission"))
    assert r.status_code == 201, r.text
    entry = await only_entry_by(client, world, db, "policy.published")
    assert (entry.detail["copied_from"], entry.detail["code"]) == ("fuzhou", "fuzhou-340000")
    assert entry.detail["moved_hospital_ids"] == [world.ids["district_hospital"]]
    moved = await only_entry_by(client, world, db, "policy.assigned")
    assert moved.hospital_id == world.ids["district_hospital"]
    assert (moved.detail["before"], moved.detail["after"]) == (
        {"policy_code": "fuzhou"},
        {"policy_code": "fuzhou-340000"},
    )


async def test_assigning_a_policy_is_audited(client, world, db):
    r = await client.put(
        f"/v1/hospitals/{world.ids['city_hospital']}/policy",
        json={"policy_code": "fuzhou"},
        headers=world.auth("commission"),
    )
    assert r.status_code == 204, r.text
    entry = await only_entry_by(client, world, db, "policy.assigned")
    assert entry.hospital_id == world.ids["city_hospital"]
    assert (entry.detail["before"], entry.detail["after"]) == (
        {"policy_code": "test-city"},
        {"policy_code": "fuzhou"},
    )


async def test_setting_opening_hours_is_audited_with_before_and_after(client, world, db):
    hours = {"mon": [["08:00", "12:00"]]}
    for value in (hours, None):
        r = await client.put(
            f"/v1/organisations/{world.ids['chc_a']}/opening-hours",
            json={"opening_hours": value},
            headers=world.auth("commission"),
        )
        assert r.status_code == 200, r.text
    first, second = await entries(db, "organisation.opening_hours")
    assert (first.detail["before"], first.detail["after"]) == (
        {"opening_hours": None},
        {"opening_hours": hours},
    )
    assert (second.detail["before"], second.detail["after"]) == (
        {"opening_hours": hours},
        {"opening_hours": None},
    )


async def test_issuing_an_api_key_is_audited_without_the_key(world, db, crypto):
    actor = Actor.system("cli", now=world.clock.now())
    client_row, token = await db.run(
        lambda s: create_api_client(
            session=s,
            actor=actor,
            crypto=crypto,
            organisation_id=world.ids["chc_a"],
            role="primary",
            name="new",
        )
    )
    [entry] = [e for e in await entries(db, "api_client.issued") if e.detail["client_id"] == client_row.id]
    assert entry.actor == "cli"
    assert entry.detail["after"] == {"organisation_id": world.ids["chc_a"], "role": "primary", "name": "new"}
    written = json.dumps(entry.detail)
    assert token not in written
    assert token[:10] not in written  # not even the prefix that identifies it


async def test_revoking_an_api_key_is_audited_without_the_key(client, world, db):
    booker = await client_id(client, world, "chc_a")
    r = await client.post(
        "/v1/supervision/suspensions",
        json={"subject_type": "api_client", "subject_id": booker, "mode": "revoked", "reason": "泄露"},
        headers=world.auth("commission"),
    )
    assert r.status_code == 201, r.text
    entry = await only_entry_by(client, world, db, "access.revoked")
    assert (entry.detail["subject_type"], entry.detail["subject_id"]) == ("api_client", booker)
    assert (entry.detail["before"], entry.detail["after"]) == (None, {"mode": "revoked", "in_force": True})
    assert world.keys["chc_a"] not in json.dumps(entry.detail)
    r = await client.post(
        f"/v1/supervision/suspensions/{r.json()['id']}/reinstate",
        json={"reason": "已更换"},
        headers=world.auth("commission"),
    )
    assert r.status_code == 200, r.text
    entry = await only_entry_by(client, world, db, "access.reinstated")
    assert (entry.detail["before"]["in_force"], entry.detail["after"]["in_force"]) == (True, False)


async def test_webhook_endpoint_writes_are_audited_without_secrets(client, world, db, receiver):
    auth = world.auth("city_hospital")
    r = await client.post(
        "/v1/webhooks/endpoints", json={"url": receiver.url, "event_types": ["referral.booked"]}, headers=auth
    )
    assert r.status_code == 201, r.text
    endpoint_id, secrets = r.json()["id"], [r.json()["secret"]]
    r = await client.patch(
        f"/v1/webhooks/endpoints/{endpoint_id}",
        json={"event_types": ["referral.booked", "referral.cancelled"]},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    r = await client.post(f"/v1/webhooks/endpoints/{endpoint_id}/rotate-secret", headers=auth)
    assert r.status_code == 200, r.text
    secrets.append(r.json()["secret"])
    r = await client.delete(f"/v1/webhooks/endpoints/{endpoint_id}", headers=auth)
    assert r.status_code == 204, r.text

    created = await only_entry_by(client, world, db, "webhook.endpoint_registered", "city_hospital")
    assert created.detail["before"] is None
    assert created.detail["after"]["event_types"] == ["referral.booked"]
    updated = await only_entry_by(client, world, db, "webhook.endpoint_updated", "city_hospital")
    assert updated.detail["before"]["event_types"] == ["referral.booked"]
    assert updated.detail["after"]["event_types"] == ["referral.booked", "referral.cancelled"]
    rotated = await only_entry_by(client, world, db, "webhook.secret_rotated", "city_hospital")
    assert (rotated.detail["before"]["secrets_signing"], rotated.detail["after"]["secrets_signing"]) == (1, 2)
    deleted = await only_entry_by(client, world, db, "webhook.endpoint_deleted", "city_hospital")
    assert (deleted.detail["before"]["url"], deleted.detail["after"]) == (
        created.detail["after"]["url"],
        None,
    )
    for entry in (created, updated, rotated, deleted):
        assert entry.hospital_id == world.ids["city_hospital"]
        written = json.dumps(entry.detail)
        assert not any(secret in written for secret in secrets), entry.action


async def test_commission_finds_its_regions_admin_writes_in_the_trail(client, world, db):
    r = await client.put(
        f"/v1/hospitals/{world.ids['city_hospital']}/policy",
        json={"policy_code": "fuzhou"},
        headers=world.auth("commission"),
    )
    assert r.status_code == 204, r.text
    r = await client.post(
        "/v1/audit/search", json={"action": "policy.assigned"}, headers=world.auth("commission")
    )
    found: list[dict[str, Any]] = r.json()["items"]
    mine = await client_id(client, world, "commission")
    assert [e["detail"]["after"] for e in found if e["actor_client_id"] == mine] == [
        {"policy_code": "fuzhou"}
    ]
