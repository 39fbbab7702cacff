"""The commission sets up the region; bad input is a 4xx problem and writes nothing."""

from __future__ import annotations

from sqlalchemy import text


async def test_region_with_unknown_parent_is_refused(client, world):
    r = await client.post(
        "/v1/regions",
        json={
            "regions": [{"code": "340302", "name": "龙子湖区", "level": "county", "parent_code": "340300"}]
        },
        headers=world.auth("commission"),
    )
    assert r.status_code == 422
    assert r.json()["code"] == "region_parent_missing"


async def test_region_hierarchy_in_one_batch(client, world):
    r = await client.post(
        "/v1/regions",
        json={
            "regions": [
                {"code": "340302", "name": "龙子湖区", "level": "county", "parent_code": "340300"},
                {"code": "340300", "name": "蚌埠市", "level": "city", "parent_code": "340000"},
            ]
        },
        headers=world.auth("commission"),
    )
    assert r.status_code == 204, r.text


async def test_alliance_members_listed_twice_count_once(client, world):
    r = await client.post(
        "/v1/alliances",
        json={"name": "瑶海医共体", "lead_hospital_code": "H-DIST", "member_codes": ["P-A", "P-A", "P-B"]},
        headers=world.auth("commission"),
    )
    assert r.status_code == 201, r.text
    assert r.json()["member_ids"] == sorted([world.ids["chc_a"], world.ids["chc_b"]])


async def test_alliance_with_unknown_member_writes_nothing(client, world, db):
    r = await client.post(
        "/v1/alliances",
        json={"name": "x", "lead_hospital_code": "H-DIST", "member_codes": ["P-A", "P-NOWHERE"]},
        headers=world.auth("commission"),
    )
    assert r.status_code == 404
    assert r.json()["code"] == "organisation_not_found"
    count = await db.run(lambda s: s.scalar(text("SELECT count(*) FROM alliances")))
    assert count == 0


async def test_duplicate_organisation_code_is_a_409(client, world):
    body = {
        "code": "P-A",
        "name": "x",
        "kind": "primary",
        "region_code": "340102",
        "primary_kind": "community",
    }
    r = await client.post("/v1/organisations", json=body, headers=world.auth("commission"))
    assert r.status_code == 409
    assert r.json()["code"] == "organisation_exists"


async def test_province_with_unknown_parent_is_refused(client, world):
    r = await client.post(
        "/v1/regions",
        json={
            "regions": [{"code": "340000", "name": "安徽省", "level": "province", "parent_code": "349900"}]
        },
        headers=world.auth("commission"),
    )
    assert r.status_code == 422
    assert r.json()["code"] == "region_parent_missing"
