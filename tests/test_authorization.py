"""A commission's writes stay inside its region; policy codes belong to regions (docs/authorization.md)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select, text

from service.models.policy import HospitalPolicy, Policy
from service.models.registry import Alliance, Organisation, Region
from service.policy.presets import DEFAULT_NO_SHOW
from service.policy.service import policy_in_force
from tests.factories import TEST_POLICY, add_jiangsu


def policy_body(**changes: Any) -> dict[str, Any]:
    body = TEST_POLICY | {"no_show_rule": DEFAULT_NO_SHOW} | changes
    return {k: str(v) if isinstance(v, Decimal | date) else v for k, v in body.items()}


@pytest.fixture
async def jiangsu(world, crypto):
    await add_jiangsu(world, crypto)
    return world


async def held_code(db, hospital_id: int) -> str:
    code: str = await db.run(
        lambda s: s.scalar(
            select(HospitalPolicy.policy_code).where(
                HospitalPolicy.hospital_id == hospital_id, HospitalPolicy.resource_kind == "outpatient"
            )
        )
    )
    return code


async def versions(db, code: str) -> list[int]:
    rows = await db.run(
        lambda s: s.scalars(select(Policy.version).where(Policy.code == code).order_by("version"))
    )
    return list(rows)


# --- regions, organisations, alliances ----------------------------------------------------------


async def test_commission_cannot_rename_another_regions_division(client, jiangsu, db):
    r = await client.post(
        "/v1/regions",
        json={"regions": [{"code": "340102", "name": "改名区", "level": "county", "parent_code": "340100"}]},
        headers=jiangsu.auth("jiangsu_commission"),
    )
    assert (r.status_code, r.json()["code"]) == (403, "out_of_region")
    region = await db.run(lambda s: s.get(Region, "340102"))
    assert region.name == "瑶海区"


async def test_commission_cannot_add_a_division_to_another_region(client, jiangsu, db):
    batch = [
        {"code": "320104", "name": "秦淮区", "level": "county", "parent_code": "320100"},
        {"code": "340181", "name": "巢湖市", "level": "county", "parent_code": "340100"},
    ]
    r = await client.post("/v1/regions", json={"regions": batch}, headers=jiangsu.auth("jiangsu_commission"))
    assert (r.status_code, r.json()["code"]) == (403, "out_of_region")
    # One division outside refuses the whole batch: nothing of it is written.
    assert await db.run(lambda s: s.get(Region, "320104")) is None


async def test_commission_cannot_hang_its_division_under_another_regions(client, jiangsu, db):
    batch = [{"code": "320199", "name": "新区", "level": "county", "parent_code": "340100"}]
    r = await client.post("/v1/regions", json={"regions": batch}, headers=jiangsu.auth("jiangsu_commission"))
    assert (r.status_code, r.json()["code"]) == (403, "out_of_region")
    assert await db.run(lambda s: s.get(Region, "320199")) is None


async def test_commission_renames_a_division_of_its_own_region(client, jiangsu, db):
    r = await client.post(
        "/v1/regions",
        json={
            "regions": [
                {"code": "320102", "name": "玄武区（新）", "level": "county", "parent_code": "320100"}
            ]
        },
        headers=jiangsu.auth("jiangsu_commission"),
    )
    assert r.status_code == 204, r.text
    assert (await db.run(lambda s: s.get(Region, "320102"))).name == "玄武区（新）"


async def test_commission_cannot_create_an_organisation_in_another_region(client, jiangsu, db):
    body = {
        "code": "P-NEW",
        "name": "安徽某中心",
        "kind": "primary",
        "region_code": "340102",
        "primary_kind": "community",
    }
    r = await client.post("/v1/organisations", json=body, headers=jiangsu.auth("jiangsu_commission"))
    assert (r.status_code, r.json()["code"]) == (403, "out_of_region")
    r = await client.post("/v1/organisations", json=body, headers=jiangsu.auth("commission"))
    assert r.status_code == 201, r.text
    assert r.json()["region_code"] == "340102"


async def test_out_of_region_centre_cannot_join_alliance(client, jiangsu, db):
    r = await client.post(
        "/v1/alliances",
        json={"name": "瑶海医共体", "lead_hospital_code": "H-DIST", "member_codes": ["P-A", "P-JS"]},
        headers=jiangsu.auth("commission"),
    )
    assert (r.status_code, r.json()["code"]) == (403, "out_of_region")
    assert "P-JS" in r.json()["detail"]
    count = await db.run(lambda s: s.scalar(select(func.count()).select_from(Alliance)))
    assert count == 0


async def test_commission_cannot_build_an_alliance_around_another_regions_hospital(client, jiangsu, db):
    r = await client.post(
        "/v1/alliances",
        json={"name": "跨省医联体", "lead_hospital_code": "H-DIST", "member_codes": ["P-JS"]},
        headers=jiangsu.auth("jiangsu_commission"),
    )
    assert (r.status_code, r.json()["code"]) == (403, "out_of_region")
    count = await db.run(lambda s: s.scalar(select(func.count()).select_from(Alliance)))
    assert count == 0


async def test_commission_cannot_set_another_regions_opening_hours(client, jiangsu, db):
    r = await client.put(
        f"/v1/organisations/{jiangsu.ids['chc_a']}/opening-hours",
        json={"opening_hours": {"mon": [["08:00", "12:00"]]}},
        headers=jiangsu.auth("jiangsu_commission"),
    )
    assert (r.status_code, r.json()["code"]) == (404, "organisation_not_found")
    org = await db.run(lambda s: s.get(Organisation, jiangsu.ids["chc_a"]))
    assert org.opening_hours is None


# --- assigning policies -------------------------------------------------------------------------


async def test_commission_cannot_assign_a_policy_to_another_regions_hospital(client, jiangsu, db):
    r = await client.put(
        f"/v1/hospitals/{jiangsu.ids['provincial_hospital']}/policy",
        json={"policy_code": "fuzhou"},
        headers=jiangsu.auth("jiangsu_commission"),
    )
    assert (r.status_code, r.json()["code"]) == (404, "hospital_not_found")
    assert await held_code(db, jiangsu.ids["provincial_hospital"]) == "anhui-provincial"


async def test_commission_cannot_assign_another_regions_own_code(client, jiangsu, db):
    """test-city belongs to Anhui: Anhui's next version would change a Jiangsu hospital's rules."""
    r = await client.put(
        f"/v1/hospitals/{jiangsu.ids['jiangsu_hospital']}/policy",
        json={"policy_code": "test-city"},
        headers=jiangsu.auth("jiangsu_commission"),
    )
    assert (r.status_code, r.json()["code"]) == (403, "policy_of_another_region")
    assert await held_code(db, jiangsu.ids["jiangsu_hospital"]) == "fuzhou"


async def test_commission_assigns_a_preset_to_its_own_hospital(client, jiangsu, db):
    r = await client.put(
        f"/v1/hospitals/{jiangsu.ids['jiangsu_hospital']}/policy",
        json={"policy_code": "shanghai"},
        headers=jiangsu.auth("jiangsu_commission"),
    )
    assert r.status_code == 204, r.text
    assert await held_code(db, jiangsu.ids["jiangsu_hospital"]) == "shanghai"


# --- publishing: copy-on-write per region -------------------------------------------------------


async def test_commission_cannot_publish_another_regions_preset_in_place(client, jiangsu, db):
    r = await client.post(
        "/v1/policies",
        json=policy_body(code="anhui-provincial", ratio="0.90"),
        headers=jiangsu.auth("jiangsu_commission"),
    )
    assert r.status_code == 201, r.text
    assert (r.json()["code"], r.json()["region_code"]) == ("anhui-provincial-320000", "320000")
    assert await versions(db, "anhui-provincial") == [1]
    assert await held_code(db, jiangsu.ids["provincial_hospital"]) == "anhui-provincial"
    policy = await db.run(
        lambda s: policy_in_force(
            session=s, hospital_id=jiangsu.ids["provincial_hospital"], on=date(2026, 3, 10), kind="outpatient"
        )
    )
    assert (policy.code, policy.ratio) == ("anhui-provincial", Decimal("0.10"))


async def test_commission_cannot_publish_another_regions_own_code_in_place(client, jiangsu, db):
    r = await client.post(
        "/v1/policies", json=policy_body(ratio="0.90"), headers=jiangsu.auth("jiangsu_commission")
    )
    assert r.status_code == 201, r.text
    assert r.json()["code"] == "test-city-320000"
    assert await versions(db, "test-city") == [1]


async def test_commission_cannot_take_the_code_of_another_regions_copy_first(client, jiangsu, db):
    """Jiangsu publishing "tianjin-340000" first would block Anhui's own copy of tianjin."""
    r = await client.post(
        "/v1/policies", json=policy_body(code="tianjin-340000"), headers=jiangsu.auth("jiangsu_commission")
    )
    assert (r.status_code, r.json()["code"]) == (403, "out_of_region")
    assert await versions(db, "tianjin-340000") == []
    r = await client.post(
        "/v1/policies", json=policy_body(code="tianjin"), headers=jiangsu.auth("commission")
    )
    assert r.status_code == 201, r.text
    assert r.json()["code"] == "tianjin-340000"


async def test_publishing_a_shared_preset_moves_only_the_regions_own_hospitals(client, jiangsu, db):
    """Both provinces hold fuzhou; Anhui's version reaches Anhui's hospital and not Jiangsu's."""
    r = await client.post(
        "/v1/policies",
        json=policy_body(code="fuzhou", scope="by_tier", ratio="0.30", effective_from="2026-04-01"),
        headers=jiangsu.auth("commission"),
    )
    assert r.status_code == 201, r.text
    assert (r.json()["code"], r.json()["version"]) == ("fuzhou-340000", 2)
    assert await versions(db, "fuzhou") == [1]
    assert await held_code(db, jiangsu.ids["district_hospital"]) == "fuzhou-340000"
    assert await held_code(db, jiangsu.ids["jiangsu_hospital"]) == "fuzhou"


async def test_region_copy_keeps_the_originals_history(client, jiangsu, db):
    """A version effective next month must not leave the moved hospital without a policy today."""
    r = await client.post(
        "/v1/policies",
        json=policy_body(code="fuzhou", scope="by_tier", ratio="0.30", effective_from="2026-04-01"),
        headers=jiangsu.auth("commission"),
    )
    assert r.status_code == 201, r.text
    district = jiangsu.ids["district_hospital"]

    async def in_force(on: date) -> Policy:
        return await db.run(
            lambda s: policy_in_force(session=s, hospital_id=district, on=on, kind="outpatient")
        )

    today, later = await in_force(date(2026, 3, 10)), await in_force(date(2026, 4, 10))
    assert (today.code, today.version, today.ratio) == ("fuzhou-340000", 1, Decimal("0.20"))
    assert (later.code, later.version, later.ratio) == ("fuzhou-340000", 2, Decimal("0.30"))


async def test_publishing_a_shared_code_again_adds_to_the_regions_copy(client, jiangsu, db):
    for ratio in ("0.30", "0.40"):
        r = await client.post(
            "/v1/policies", json=policy_body(code="fuzhou", ratio=ratio), headers=jiangsu.auth("commission")
        )
        assert r.status_code == 201, r.text
    assert (r.json()["code"], r.json()["version"]) == ("fuzhou-340000", 3)
    r = await client.post(
        "/v1/policies",
        json=policy_body(code="fuzhou-340000", ratio="0.50"),
        headers=jiangsu.auth("commission"),
    )
    assert (r.json()["code"], r.json()["version"]) == ("fuzhou-340000", 4)
    assert await versions(db, "fuzhou") == [1]


async def test_commission_publishes_its_own_code_in_place(client, jiangsu, db):
    r = await client.post("/v1/policies", json=policy_body(ratio="0.30"), headers=jiangsu.auth("commission"))
    assert (r.status_code, r.json()["code"], r.json()["version"]) == (201, "test-city", 2)
    assert r.json()["region_code"] == "340000"


async def test_a_new_code_belongs_to_the_publishing_region(client, jiangsu, db):
    r = await client.post(
        "/v1/policies", json=policy_body(code="js-rule"), headers=jiangsu.auth("jiangsu_commission")
    )
    assert (r.status_code, r.json()["code"], r.json()["region_code"]) == (201, "js-rule", "320000")
    r = await client.post(
        "/v1/policies", json=policy_body(code="js-rule"), headers=jiangsu.auth("commission")
    )
    assert r.json()["code"] == "js-rule-340000"
    r = await client.put(
        f"/v1/hospitals/{jiangsu.ids['city_hospital']}/policy",
        json={"policy_code": "js-rule"},
        headers=jiangsu.auth("commission"),
    )
    assert (r.status_code, r.json()["code"]) == (403, "policy_of_another_region")


async def test_presets_are_shared_and_never_published_in_place(client, jiangsu, db):
    owners = await db.run(
        lambda s: s.execute(text("SELECT DISTINCT region_code FROM policies WHERE code = 'anhui-provincial'"))
    )
    assert [row[0] for row in owners] == [None]
    r = await client.post(
        "/v1/policies", json=policy_body(code="anhui-provincial"), headers=jiangsu.auth("commission")
    )
    assert r.json()["code"] == "anhui-provincial-340000"
    assert await held_code(db, jiangsu.ids["provincial_hospital"]) == "anhui-provincial-340000"


# --- existing codes get an owner when the column arrives ----------------------------------------


async def test_migration_gives_an_existing_code_the_smallest_region_holding_its_hospitals(owner_url):
    """Existing codes keep whoever could reach their hospitals; presets and cross-province codes stay shared."""
    import asyncpg
    from sqlalchemy.engine import make_url

    from service.models.migrations import upgrade

    url = make_url(owner_url)
    admin = url.set(database="postgres").render_as_string(hide_password=False).replace("+asyncpg", "")
    name = f"{url.database}_owners"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    target = url.set(database=name).render_as_string(hide_password=False)
    try:
        await upgrade(target, "0010")
        db = await asyncpg.connect(target.replace("+asyncpg", ""))
        await db.execute(
            """
            INSERT INTO regions (code, name, level, parent_code) VALUES
              ('340000', '安徽省', 'province', NULL), ('340100', '合肥市', 'city', '340000'),
              ('340102', '瑶海区', 'county', '340100'), ('340104', '蜀山区', 'county', '340100'),
              ('320000', '江苏省', 'province', NULL);
            INSERT INTO organisations (code, name, kind, region_code, hospital_level, hospital_tier) VALUES
              ('H1', 'a', 'hospital', '340102', 3, 'city'), ('H2', 'b', 'hospital', '340104', 3, 'city'),
              ('H3', 'c', 'hospital', '340104', 3, 'city'), ('H4', 'd', 'hospital', '320000', 3, 'city'),
              ('H5', 'e', 'hospital', '340104', 3, 'city'), ('H6', 'f', 'hospital', '340102', 3, 'city');
            """
        )
        codes = ["city-wide", "one-county", "two-provinces", "unassigned", "fuzhou"]
        for code in codes:
            await db.execute(
                """
                INSERT INTO policies (code, version, name, effective_from, ratio, ratio_base, min_senior_share,
                  lead_minutes, scope, disease_prefixes, preferred_specialties, consultation_max_age_hours,
                  cancel_cutoff_minutes, cancel_hotline, no_show_rule, created_at)
                VALUES ($1, 1, $1, '2024-01-01', 0.2, 'all_outpatient', 0, 1440, 'city', '{I10}', '{}', 72,
                  120, '12320', '{}', now())
                """,
                code,
            )
        held = [("H1", "city-wide"), ("H2", "city-wide"), ("H3", "one-county"), ("H5", "fuzhou")]
        held += [("H6", "two-provinces"), ("H4", "two-provinces")]
        for hospital, code in held:
            await db.execute(
                "INSERT INTO hospital_policies (hospital_id, resource_kind, policy_code, assigned_at) "
                "SELECT id, 'outpatient', $2, now() FROM organisations WHERE code = $1",
                hospital,
                code,
            )
        await db.close()
        await upgrade(target)
        db = await asyncpg.connect(target.replace("+asyncpg", ""))
        owners = dict(await db.fetch("SELECT code, region_code FROM policies"))
        await db.close()
        assert owners == {
            "city-wide": "340100",
            "one-county": "340104",
            "two-provinces": None,
            "unassigned": None,
            "fuzhou": None,
        }
    finally:
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await conn.close()


async def test_concurrent_publishes_of_a_shared_code_make_one_copy(client, jiangsu, db):
    import asyncio

    async def publish(ratio: str) -> Any:
        return await client.post(
            "/v1/policies", json=policy_body(code="fuzhou", ratio=ratio), headers=jiangsu.auth("commission")
        )

    answers = await asyncio.gather(*(publish(f"0.{n}0") for n in range(2, 8)))
    assert [r.status_code for r in answers] == [201] * 6, [r.text for r in answers]
    assert await versions(db, "fuzhou-340000") == list(range(1, 8))
