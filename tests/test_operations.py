"""Health, readiness, metrics, authentication, problem+json, migrations, audit, configuration."""

from __future__ import annotations

import json
from datetime import date

import asyncpg
import pytest
import sqlalchemy.exc
from cryptography.exceptions import InvalidTag
from pydantic import ValidationError
from sqlalchemy import text

from service.kit.config import Settings
from service.kit.crypto import Crypto
from service.models.audit import AuditEntry
from service.models.migrations import downgrade, head_revision, upgrade


async def test_healthz_and_readyz(client, world):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "schema": head_revision()}


async def test_request_latency_is_recorded_by_route_template_and_not_served_on_the_api(client, world):
    from prometheus_client import generate_latest

    await client.get("/v1/me", headers=world.auth("chc_a"))
    # The metrics port (SLOTPOOL_METRICS_PORT) serves this registry; tests/test_cli_failures.py scrapes it.
    text = generate_latest().decode()
    assert 'slotpool_http_request_seconds_count{method="GET",route="/v1/me",status="200"}' in text
    assert (await client.get("/metrics")).status_code == 404


async def test_requests_without_a_key_are_401_problems(client, world):
    r = await client.get("/v1/me")
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["www-authenticate"] == "Bearer"
    body = r.json()
    assert body["code"] == "missing_credentials"
    assert body["type"] == "urn:slotpool:problem:missing_credentials"
    assert body["request_id"] == r.headers["x-request-id"]
    r = await client.get("/v1/me", headers={"Authorization": "Bearer sp_nope"})
    assert r.json()["code"] == "invalid_credentials"


async def test_wrong_role_is_403(client, world):
    r = await client.post("/v1/hospital/sessions", json={"sessions": []}, headers=world.auth("chc_a"))
    assert r.status_code == 403
    assert r.json()["code"] == "wrong_role"


async def test_r14_revoked_key_is_refused_on_the_next_request(client, world, db):
    assert (await client.get("/v1/me", headers=world.auth("chc_a"))).status_code == 200
    await db.run(lambda s: s.execute(text("UPDATE api_clients SET revoked_at = now() WHERE name = 'chc_a'")))
    r = await client.get("/v1/me", headers=world.auth("chc_a"))
    assert r.status_code == 401
    assert r.json()["code"] == "key_revoked"


async def test_api_keys_are_stored_as_digests_only(world, db):
    rows = (await db.run(lambda s: s.execute(text("SELECT key_prefix, key_digest FROM api_clients")))).all()
    for prefix, digest in rows:
        assert len(digest) == 32
        assert all(key.encode() not in bytes(digest) for key in world.keys.values())
        assert len(prefix) == 10


async def test_unknown_route_is_a_404_problem(client):
    r = await client.get("/v1/nowhere")
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"


async def test_r15_audit_entries_cannot_be_updated_or_deleted(client, world, db):
    r = await client.post(
        "/v1/referrals", json={"slot_id": 1, "referring_doctor_code": "FD-1", "resident": {"id_number": "x" * 18, "name": "x"},
                                "consultation": {"encounter_id": "e", "encountered_at": "2026-03-02T08:00:00+08:00"},
                                "diagnoses": ["I10"]},
        headers=world.auth("chc_a"),
    )  # fmt: skip
    assert r.status_code == 422
    count = await db.run(
        lambda s: s.scalar(text("SELECT count(*) FROM audit_entries WHERE action = 'referral.refused'"))
    )
    assert count == 1
    for statement in ("UPDATE audit_entries SET reason = 'rewritten'", "DELETE FROM audit_entries"):
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="permission denied"):
            await db.run(lambda s, sql=statement: s.execute(text(sql)))
    entry = await db.run(
        lambda s: s.scalar(text("SELECT action FROM audit_entries ORDER BY id DESC LIMIT 1"))
    )
    assert entry == "referral.refused"
    assert AuditEntry.__tablename__ == "audit_entries"


async def test_r15_personal_data_is_ciphertext_at_rest(client, world, db):
    from tests.factories import sign, synthetic_id

    await sign(client, world, [1])
    rows = await db.run(lambda s: s.execute(text("SELECT id_number_enc, name_enc, id_index FROM residents")))
    [(id_enc, name_enc, _index)] = rows.all()
    assert synthetic_id("340102", seq=1).encode() not in bytes(id_enc)
    assert "张1".encode() not in bytes(name_enc)


def test_r15_ciphertext_is_bound_to_its_column():
    crypto = Crypto(data_key=b"k" * 32, index_key=b"i" * 32, api_key_pepper=b"p" * 32)
    blob = crypto.encrypt("340102195804120011", column="residents.id_number")
    assert crypto.decrypt(blob, column="residents.id_number") == "340102195804120011"
    with pytest.raises(InvalidTag):
        crypto.decrypt(blob, column="residents.name")


def test_production_refuses_development_secrets(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/slotpool")
    with pytest.raises(ValidationError, match="SLOTPOOL_DATA_KEY"):
        Settings(env="production")


def test_production_refuses_the_embedded_database():
    import base64

    key = base64.b64encode(b"x" * 32).decode()
    with pytest.raises(ValidationError, match="DATABASE_URL"):
        Settings(env="production", data_key=key, index_key=key, api_key_pepper=key, database_url=None)


async def test_migrations_downgrade_and_upgrade_cleanly(owner_url):
    from sqlalchemy.engine import make_url

    url = make_url(owner_url)
    admin = url.set(database="postgres").render_as_string(hide_password=False).replace("+asyncpg", "")
    conn = await asyncpg.connect(admin)
    name = f"{url.database}_roundtrip"
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    target = url.set(database=name).render_as_string(hide_password=False)
    try:
        await upgrade(target)
        await downgrade(target, "base")
        await upgrade(target)
        check = await asyncpg.connect(target.replace("+asyncpg", ""))
        assert await check.fetchval("SELECT version_num FROM alembic_version") == head_revision()
        await check.close()
    finally:
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await conn.close()


@pytest.mark.parametrize(
    ("method", "path", "body_or_params"),
    [
        ("POST", "/v1/referrals", {"json": {"slot_id": 2**70}}),
        ("GET", "/v1/pool/slots", {"params": {"hospital_id": 2**70}}),
        ("GET", "/v1/pool/slots", {"params": {"cursor": -1}}),
        ("PUT", f"/v1/hospitals/{2**70}/policy", {"json": {"policy_code": "fuzhou"}}),
        ("GET", "/v1/shortfalls", {"params": {"hospital_id": 0}}),
    ],
)
async def test_ids_outside_bigint_are_a_422_not_a_500(client, world, method, path, body_or_params):
    who = {"/v1/referrals": "chc_a", "/v1/pool/slots": "chc_a"}.get(path, "commission")
    r = await client.request(method, path, headers=world.auth(who), **body_or_params)
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_request"


async def test_nul_characters_anywhere_are_a_422(client, world):
    from datetime import date

    from tests.factories import contract_row, session_item

    item = session_item("S1", date(2026, 3, 10), slots=2)
    item["doctor"]["name"] = "王\x00"
    r = await client.post(
        "/v1/hospital/sessions", json={"sessions": [item]}, headers=world.auth("city_hospital")
    )
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_request"
    row = contract_row(1, name="张\x00")
    r = await client.post("/v1/contracts/sync", json={"contracts": [row]}, headers=world.auth("platform"))
    assert r.status_code == 422


@pytest.mark.parametrize("field", ["lead_hospital_code", "member_codes", "name"])
async def test_a_lone_surrogate_anywhere_is_a_422_not_a_500(client, world, field):
    """JSON may escape half a UTF-16 pair ("\\ud800"); PostgreSQL text cannot hold it."""
    body = {"name": "联盟", "lead_hospital_code": "H-CITY", "member_codes": ["P-A"]}
    body[field] = ["\ud800"] if field == "member_codes" else "\ud800"
    raw = json.dumps(body)  # ensure_ascii keeps the lone surrogate as its escape
    r = await client.post(
        "/v1/alliances", content=raw, headers={**world.auth("commission"), "content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_request"


async def test_push_version_beyond_bigint_is_a_422(client, world):
    from datetime import date

    from tests.factories import session_item

    item = session_item("S1", date(2026, 3, 10), slots=2, version=2**63)
    r = await client.post(
        "/v1/hospital/sessions", json={"sessions": [item]}, headers=world.auth("city_hospital")
    )
    assert r.status_code == 422


@pytest.mark.parametrize("path", ["/v1/referrals?department_code=%00", "/v1/referrals/R%00"])
async def test_nul_in_the_url_is_a_422(client, world, path):
    r = await client.get(path, headers=world.auth("city_hospital"))
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_request"


async def test_nul_in_a_fhir_url_is_an_operation_outcome(client, world):
    """Everything under /fhir answers OperationOutcomes; a malformed search is FHIR's 400."""
    r = await client.get("/fhir/Slot?status=%00", headers=world.auth("chc_a"))
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["details"]["coding"][0]["code"] == "invalid_search_parameter"


async def test_an_unreadable_body_is_a_422_invalid_request(client, world):
    """A body that is not text in its encoding is the caller's fault, answered as a JSON syntax error is."""
    headers = {**world.auth("chc_a"), "content-type": "application/json"}
    for body in (b'"\xc3\x28"', b"{not json"):
        r = await client.post("/v1/referrals/R1/cancel", content=body, headers=headers)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "invalid_request"


async def test_background_loops_do_their_work_and_stop_together(db, crypto, clock, world, client, clean_db):
    """serve and worker run the same loops; a due slot is returned while they run, and all stop on one event."""
    import asyncio
    from datetime import datetime, timedelta

    from prometheus_client import REGISTRY

    from service.jobs import background_loops
    from service.reports.summary import read_window
    from tests.factories import pool_slots, push, session_item

    [pushed] = await push(client, world, [session_item("S1", date(2026, 3, 10))])
    assert await pool_slots(client, world)
    clock.set(datetime.fromisoformat(pushed["public_at"]))
    settings = Settings(
        log_json=False,
        release_interval_seconds=0.05,
        signals_interval_seconds=0.05,
        report_summary_interval_seconds=0.05,
        gauges_interval_seconds=0.05,
    )
    stop = asyncio.Event()
    loops = [
        asyncio.create_task(loop)
        for loop in background_loops(
            db=db, clock=clock, crypto=crypto, settings=settings, database_url=clean_db, stop=stop
        )
    ]
    read_before = REGISTRY.get_sample_value("slotpool_gauges_read_timestamp_seconds")
    clock.advance(timedelta(seconds=1))  # the gauges' next reading stamps a later time
    try:
        # release, delivery, detection, purge, report days, waiting-list offers, gauges
        assert len(loops) == 7
        async with asyncio.timeout(10):
            while await pool_slots(client, world):  # noqa: ASYNC110 (polling the API, as a client would)
                await asyncio.sleep(0.05)
            while await db.run(lambda s: read_window(session=s)) is None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # the day before the clock's is closed
            while REGISTRY.get_sample_value("slotpool_gauges_read_timestamp_seconds") in (None, read_before):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        stop.set()  # even when an assertion fails: no loop may outlive its test
    async with asyncio.timeout(10):
        await asyncio.gather(*loops)
    assert all(task.done() and task.exception() is None for task in loops)
