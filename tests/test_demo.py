"""The demo region: seeded through the service functions, keys that work, re-runs that add nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from service.app import create_app
from service.demo import HOSPITALS, booking_example, print_demo_keys, roll_forward, seed_demo
from service.kit.clock import Clock, ManualClock, local_date
from service.kit.context import Actor
from service.kit.crypto import Crypto
from service.kit.db import Database
from service.policy.service import install_presets


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _install_presets(url: str) -> None:
    db = Database(url, pool_size=1)
    try:
        await db.run(lambda s: install_presets(session=s, actor=Actor.system("test", now=Clock().now())))
    finally:
        await db.dispose()


async def _me_roles(url: str, settings, keys: dict[str, str]) -> dict[str, str]:
    app = create_app(settings, database_url=url, run_loops=False)
    roles = {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://slotpool.test") as client:
            for label, key in keys.items():
                r = await client.get("/v1/me", headers={"Authorization": f"Bearer {key}"})
                assert r.status_code == 200, r.text
                roles[label] = r.json()["role"]
            # Whatever the time of day, one service date is in its pool window right now.
            r = await client.get("/v1/pool/slots", headers={"Authorization": f"Bearer {keys['primary']}"})
            assert r.status_code == 200, r.text
            assert r.json()["items"], "the demo community centre has nothing to book"
    return roles


def _printed_body(out: str) -> tuple[str, dict]:
    """The SLOT= line and the JSON body of the printed booking example, as a shell would see them."""
    slot_line = next(line for line in out.splitlines() if line.strip().startswith("SLOT=$(curl"))
    post_line = next(line for line in out.splitlines() if '"$SLOTPOOL/v1/referrals" -d ' in line)
    assert '-H "Idempotency-Key: demo-1"' in post_line and "-X POST" in post_line
    quoted = post_line.split(" -d ", 1)[1]
    assert quoted.startswith("'") and quoted.endswith("'")
    # '{"slot_id": '"$SLOT"', ...}' -> the shell splices $SLOT between two single-quoted parts.
    before, after = quoted[1:-1].split("'\"$SLOT\"'", 1)
    return slot_line, json.loads(before + "0" + after)


async def _book_printed(url: str, settings, key: str, body: dict) -> dict:
    app = create_app(settings, database_url=url, run_loops=False)
    headers = {"Authorization": f"Bearer {key}"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://slotpool.test") as client:
            r = await client.get("/v1/pool/slots?limit=1", headers=headers)
            assert r.status_code == 200, r.text
            body = {**body, "slot_id": r.json()["items"][0]["slot_id"]}
            r = await client.post(
                "/v1/referrals", json=body, headers={**headers, "Idempotency-Key": "demo-1"}
            )
            assert r.status_code == 201, r.text
            return r.json()


async def test_demo_seed(clean_db, settings, capsys):
    await _install_presets(clean_db)
    keys = await seed_demo(clean_db, settings)
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("seeding the demo")]
    assert len(progress) >= 3 and progress[-1].startswith(
        f"seeding the demo region ({len(progress)}/{len(progress)})"
    )
    assert set(keys) == {"hospital", "primary", "platform", "hotline", "commission"}

    conn = await asyncpg.connect(_plain(clean_db))
    try:
        tiers = {
            r["code"]: (r["hospital_level"], r["hospital_tier"], r["policy_code"])
            for r in await conn.fetch(
                "SELECT o.code, o.hospital_level, o.hospital_tier, hp.policy_code FROM organisations o "
                "JOIN hospital_policies hp ON hp.hospital_id = o.id WHERE o.kind = 'hospital'"
            )
        }
        assert sorted(tiers.values()) == [
            (2, "county", "anhui-alliance"),
            (3, "city", "anhui-city"),
            (3, "provincial", "anhui-provincial"),
        ]
        kinds = dict(
            await conn.fetch(
                "SELECT primary_kind, count(*) FROM organisations WHERE kind = 'primary' GROUP BY 1"
            )
        )
        assert sum(kinds.values()) >= 4
        assert kinds["community"] >= 2 and kinds["township"] >= 2
        assert await conn.fetchval("SELECT count(*) FROM alliance_members") >= 2
        assert await conn.fetchval("SELECT count(*) FROM residents") >= 200
        assert await conn.fetchval(
            "SELECT count(*) FROM family_doctor_contracts WHERE starts_on <= current_date AND ends_on >= current_date"
        ) == await conn.fetchval("SELECT count(*) FROM family_doctor_contracts")
        assert await conn.fetchval("SELECT count(DISTINCT service_date) FROM clinic_sessions") == 14
        # A Hefei demo is on Anhui's rules: every hospital's policy is a preset of Anhui, and the
        # hotline its patients are told (the slip, the notice) is Hefei's 12320, not Tianjin's.
        policies = await conn.fetch(
            "SELECT p.code, p.cancel_hotline FROM hospital_policies hp "
            "JOIN policies p ON p.code = hp.policy_code"
        )
        assert policies and all(r["code"].startswith("anhui-") for r in policies), policies
        assert {r["cancel_hotline"] for r in policies} == {"12320"}
        # What the slip prints and FHIR serves: every demo hospital's address, postal code and
        # phone; and Hefei's SMS templates and booking deep link, set by the commission.
        contacts = await conn.fetch(
            "SELECT address_line, postal_code, phone FROM organisations WHERE kind = 'hospital'"
        )
        assert len(contacts) == 3 and all(all(r.values()) for r in contacts), contacts
        notices = await conn.fetchrow("SELECT * FROM region_notice_settings WHERE region_code = '340100'")
        assert (
            notices["sms_sign_name"] and notices["sms_template_booked"] and notices["sms_template_cancelled"]
        )
        assert notices["booking_link_template"].startswith("https://")
        titles = await conn.fetch(
            "SELECT d.hospital_id, d.code, count(DISTINCT cs.doctor_title) AS n FROM clinic_sessions cs "
            "JOIN departments d ON d.id = cs.department_id GROUP BY 1, 2"
        )
        assert len(titles) >= 15 and all(r["n"] == 4 for r in titles)
        assert await conn.fetchval("SELECT max(ends_at - starts_at) FROM slots") <= timedelta(minutes=30)
        assert await conn.fetchval("SELECT count(*) FROM slots WHERE status = 'reserved'") > 0
        # The hospitals are played as pushing on time, so no rule is recorded as unmet.
        assert await conn.fetchval("SELECT count(*) FROM reservation_shortfalls") == 0
        orgs_before = await conn.fetchval("SELECT count(*) FROM organisations")
        sessions_before = await conn.fetchval("SELECT count(*) FROM clinic_sessions")
    finally:
        await conn.close()

    assert await _me_roles(clean_db, settings, keys) == {role: role for role in keys}

    again = await seed_demo(clean_db, settings)
    assert set(again) == set(keys) and not set(again.values()) & set(keys.values())
    conn = await asyncpg.connect(_plain(clean_db))
    try:
        assert await conn.fetchval("SELECT count(*) FROM organisations") == orgs_before
        assert await conn.fetchval("SELECT count(*) FROM clinic_sessions") == sessions_before
    finally:
        await conn.close()
    assert await _me_roles(clean_db, settings, again) == {role: role for role in again}

    print_demo_keys(again, host="0.0.0.0", port=8000)
    out = capsys.readouterr().out
    assert "SLOTPOOL=http://127.0.0.1:8000" in out
    assert all(key in out for key in again.values())
    assert "/v1/pool/slots" in out

    # The booking example books, as printed, for a signed resident of the primary key's centre.
    slot_line, body = _printed_body(out)
    assert '"$SLOTPOOL/v1/pool/slots?limit=1"' in slot_line and "$PRIMARY_KEY" in slot_line
    example = booking_example(local_date(Clock().now()))
    assert body["referring_doctor_code"] == example.doctor_code
    assert body["resident"] == {"id_number": example.id_number, "name": example.name}
    assert body["diagnoses"] == ["I10"]
    encountered = datetime.fromisoformat(body["consultation"]["encountered_at"])
    assert encountered.utcoffset() == timedelta(hours=8)
    assert timedelta(minutes=59) < datetime.now(UTC) - encountered < timedelta(minutes=61)
    booked = await _book_printed(clean_db, settings, again["primary"], body)
    assert booked["reference"] and booked["status"] == "booked"
    assert booked["referring_doctor"]["code"] == example.doctor_code
    assert booked["diagnoses"] == ["I10"]
    assert "95169022" not in json.dumps(booked, ensure_ascii=False)  # Tianjin's hotline, not Hefei's

    # The demo rolls forward: two days on, the hospitals have pushed the two new days, and a
    # second look finds nothing to add.
    db = Database(clean_db, pool_size=1)
    crypto = Crypto.from_settings(settings)
    later = ManualClock(Clock().now() + timedelta(days=2))
    try:
        assert await roll_forward(db, later, crypto) == 2 * len(HOSPITALS)
        assert await roll_forward(db, later, crypto) == 0
    finally:
        await db.dispose()
    conn = await asyncpg.connect(_plain(clean_db))
    try:
        today = local_date(later.now())
        ahead = await conn.fetchval(
            "SELECT count(DISTINCT service_date) FROM clinic_sessions WHERE service_date BETWEEN $1 AND $2",
            today,
            today + timedelta(days=13),
        )
        assert ahead == 14
        assert await conn.fetchval("SELECT count(*) FROM reservation_shortfalls") == 0
    finally:
        await conn.close()
