"""The commission publishes policy versions and assigns them (R1, R5)."""

from __future__ import annotations

from service.policy.presets import DEFAULT_NO_SHOW
from tests.factories import TEST_POLICY


def policy_body(**changes):
    body = TEST_POLICY | {"no_show_rule": DEFAULT_NO_SHOW} | changes
    return {k: str(v) if k in ("ratio", "min_senior_share", "effective_from") else v for k, v in body.items()}


async def test_r1_commission_publishes_the_next_version(client, world):
    r = await client.post("/v1/policies", json=policy_body(ratio="0.25"), headers=world.auth("commission"))
    assert r.status_code == 201, r.text
    assert (r.json()["code"], r.json()["version"], float(r.json()["ratio"])) == ("test-city", 2, 0.25)
    r = await client.get("/v1/policies", headers=world.auth("chc_a"))
    versions = [(p["code"], p["version"]) for p in r.json()["items"] if p["code"] == "test-city"]
    assert versions == [("test-city", 1), ("test-city", 2)]


async def test_r5_a_lead_time_under_one_day_is_refused(client, world):
    r = await client.post(
        "/v1/policies", json=policy_body(lead_minutes=1439), headers=world.auth("commission")
    )
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_request"
    assert r.json()["errors"][0]["loc"] == ["body", "lead_minutes"]


async def test_only_the_commission_publishes_or_assigns(client, world):
    r = await client.post("/v1/policies", json=policy_body(), headers=world.auth("city_hospital"))
    assert r.status_code == 403
    r = await client.put(
        f"/v1/hospitals/{world.ids['city_hospital']}/policy",
        json={"policy_code": "fuzhou"},
        headers=world.auth("city_hospital"),
    )
    assert r.status_code == 403


async def test_assigning_an_unknown_policy_is_refused(client, world):
    r = await client.put(
        f"/v1/hospitals/{world.ids['city_hospital']}/policy",
        json={"policy_code": "nowhere"},
        headers=world.auth("commission"),
    )
    assert r.status_code == 422
    assert r.json()["code"] == "policy_not_found"
