"""Each institution's declared identity stays its own (docs/identity.md).

A contract sync never rewrites what another institution declared: its referrals,
slips, notices, FHIR Appointments and events keep the name they were booked under,
a booking answers to the booker's own contract, differing declarations reach the
commission as one ``identity_name_conflict`` signal, and a region may take
contracts from its signing platform only.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidTag
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from service.app import create_app
from service.kit.clock import ManualClock
from service.kit.config import Settings
from service.kit.context import Actor
from service.kit.db import Database
from service.models.audit import AuditEntry
from service.models.events import Event
from service.models.migrations import downgrade, upgrade
from service.models.referrals import REFERRAL_RESIDENT_NAME, Referral
from service.models.residents import CONTRACT_NAME, CONTRACT_PHONE, FamilyDoctorContract
from service.residents.conflicts import note_declared_identity
from tests.conftest import START
from tests.factories import (
    add_wuhu_key,
    booking,
    build_world,
    contract_row,
    pool_slots,
    post_referral,
    push,
    session_item,
)
from tests.test_slip import _text

DAY = date(2026, 3, 10)
SEQ = 1
A_NAME = "张三丰"
B_NAME = "李四海"
ID_NUMBER = contract_row(SEQ)["resident"]["id_number"]


async def sync(
    client, world, who: str, institution: str, name: str, phone: str | None = None
) -> httpx.Response:
    """One contract of resident SEQ, declared by ``institution`` under ``name``, synced by ``who``."""
    row = contract_row(SEQ, institution=institution, name=name)
    if phone is not None:
        row["resident"]["phone"] = phone
    return await client.post("/v1/contracts/sync", json={"contracts": [row]}, headers=world.auth(who))


async def synced(client, world, who: str, institution: str, name: str) -> None:
    r = await sync(client, world, who, institution, name)
    assert r.status_code == 200, r.text
    assert r.json()["rejected"] == 0, r.text


@pytest.fixture
async def pools(client, world) -> dict[str, list[dict[str, Any]]]:
    """Cardiology and neurology on one day at the city hospital, open to both centres."""
    await push(
        client,
        world,
        [session_item("CARD-1", DAY, slots=10), session_item("NEUR-1", DAY, slots=10, department="NEUR")],
    )
    slots = await pool_slots(client, world)
    ids = {s["department"]["code"]: [] for s in slots}
    for s in slots:
        ids[s["department"]["code"]].append(s)
    return ids


async def conflicts(client, world, who: str = "commission", **params: Any) -> list[dict[str, Any]]:
    r = await client.get("/v1/supervision/identity-conflicts", params=params, headers=world.auth(who))
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def event_payloads(db, kind: str) -> list[dict[str, Any]]:
    rows = await db.run(
        lambda s: s.scalars(
            select(Event)
            .where(Event.recipient_id == Event.hospital_id)
            .where(Event.type == kind)
            .order_by(Event.id)
        )
    )
    return [e.payload for e in rows]


async def test_r8_another_centres_sync_leaves_a_referral_as_booked(client, world, pools, db):
    await synced(client, world, "chc_a", "P-A", A_NAME)
    r = await post_referral(
        client, world, booking(pools["CARD"][0]["slot_id"], SEQ, clock=world.clock, name=A_NAME), "chc_a"
    )
    assert r.status_code == 201, r.text
    reference = r.json()["reference"]

    await synced(client, world, "chc_b", "P-B", B_NAME)

    for who in ("chc_a", "city_hospital"):
        r = await client.get(f"/v1/referrals/{reference}", headers=world.auth(who))
        assert r.json()["resident_name_masked"] == "张**", who
    r = await client.get(f"/v1/referrals/{reference}/notice", headers=world.auth("chc_a"))
    assert r.json()["resident_name_masked"] == "张**"
    r = await client.get(f"/v1/referrals/{reference}/slip.pdf", headers=world.auth("chc_a"))
    slip = _text(r.content)
    assert "张**" in slip and "李**" not in slip
    r = await client.get(f"/fhir/Appointment/{reference}", headers=world.auth("city_hospital"))
    displays = [p["actor"].get("display") for p in r.json()["participant"]]
    assert "张**" in displays and "李**" not in displays
    r = await client.post(
        f"/v1/referrals/{reference}/cancel", json={"reason": "patient unwell"}, headers=world.auth("chc_a")
    )
    assert r.status_code == 200, r.text
    assert r.json()["resident_name_masked"] == "张**"
    for kind in ("referral.booked", "referral.cancelled"):
        [payload] = await event_payloads(db, kind)
        assert payload["data"]["patient"] == {"name_masked": "张**"}, kind


async def test_r8_each_centre_books_under_its_own_declared_name(client, world, pools):
    await synced(client, world, "chc_a", "P-A", A_NAME)
    await synced(client, world, "chc_b", "P-B", B_NAME)
    card, neur = pools["CARD"], pools["NEUR"]

    r = await post_referral(
        client, world, booking(card[0]["slot_id"], SEQ, clock=world.clock, name=B_NAME), "chc_a"
    )
    assert r.json()["code"] == "name_mismatch"  # another centre's declaration vouches for nothing here
    r = await post_referral(
        client, world, booking(card[0]["slot_id"], SEQ, clock=world.clock, name=A_NAME), "chc_a"
    )
    assert r.status_code == 201, r.text
    assert r.json()["resident_name_masked"] == "张**"

    r = await post_referral(
        client, world, booking(neur[0]["slot_id"], SEQ, clock=world.clock, name=A_NAME), "chc_b"
    )
    assert r.json()["code"] == "name_mismatch"
    r = await post_referral(
        client, world, booking(neur[0]["slot_id"], SEQ, clock=world.clock, name=B_NAME), "chc_b"
    )
    assert r.status_code == 201, r.text
    assert r.json()["resident_name_masked"] == "李**"


async def test_r8_a_referral_keeps_the_name_it_was_booked_under_after_its_own_centre_corrects_it(
    client, world, pools
):
    await synced(client, world, "chc_a", "P-A", A_NAME)
    r = await post_referral(
        client, world, booking(pools["CARD"][0]["slot_id"], SEQ, clock=world.clock, name=A_NAME), "chc_a"
    )
    reference = r.json()["reference"]
    await synced(client, world, "chc_a", "P-A", "王五")
    r = await client.get(f"/v1/referrals/{reference}", headers=world.auth("chc_a"))
    assert r.json()["resident_name_masked"] == "张**"
    r = await post_referral(
        client, world, booking(pools["NEUR"][0]["slot_id"], SEQ, clock=world.clock, name="王五"), "chc_a"
    )
    assert r.status_code == 201, r.text
    assert r.json()["resident_name_masked"] == "王*"


async def test_declared_names_and_phones_are_ciphertext_bound_to_their_columns(
    client, world, pools, db, crypto
):
    r = await sync(client, world, "chc_a", "P-A", A_NAME, phone="13800000001")
    assert r.status_code == 200, r.text
    await post_referral(
        client, world, booking(pools["CARD"][0]["slot_id"], SEQ, clock=world.clock, name=A_NAME), "chc_a"
    )
    contract = await db.run(lambda s: s.scalar(select(FamilyDoctorContract)))
    referral = await db.run(lambda s: s.scalar(select(Referral)))
    assert A_NAME.encode() not in contract.name_enc and b"13800000001" not in contract.phone_enc
    assert crypto.decrypt(contract.name_enc, column=CONTRACT_NAME) == A_NAME
    assert crypto.decrypt(contract.phone_enc, column=CONTRACT_PHONE) == "13800000001"
    assert crypto.decrypt(referral.resident_name_enc, column=REFERRAL_RESIDENT_NAME) == A_NAME
    with pytest.raises(InvalidTag):
        crypto.decrypt(contract.name_enc, column="residents.name")


async def test_identity_conflict_is_raised_once_per_disagreement(client, world, db):
    await synced(client, world, "chc_a", "P-A", A_NAME)
    assert await conflicts(client, world) == []
    await synced(client, world, "chc_b", "P-B", B_NAME)
    [conflict] = await conflicts(client, world)
    assert conflict["signal"] == "identity_name_conflict"
    assert conflict["status"] == "open"
    assert [
        (d["institution"]["code"], d["contract_no"], d["name_masked"]) for d in conflict["declarations"]
    ] == [
        ("P-A", "C-P-A-1", "张**"),
        ("P-B", "C-P-B-1", "李**"),
    ]
    # The same disagreement synced again, by either side or by the platform, adds nothing.
    world.clock.advance(timedelta(minutes=5))
    await synced(client, world, "chc_b", "P-B", B_NAME)
    await synced(client, world, "platform", "P-A", A_NAME)
    [again] = await conflicts(client, world)
    assert again == conflict
    raised = await db.run(
        lambda s: s.scalars(
            select(AuditEntry).where(AuditEntry.action.like("identity_conflict.%")).order_by(AuditEntry.id)
        )
    )
    assert [e.action for e in raised] == ["identity_conflict.raised"]

    # The institutions agree: the episode closes; a new disagreement is a new signal.
    await synced(client, world, "chc_b", "P-B", A_NAME)
    [closed] = await conflicts(client, world)
    assert closed["status"] == "closed" and closed["closed_at"] is not None
    await synced(client, world, "chc_b", "P-B", "王五")
    latest, earlier = await conflicts(client, world)
    assert (latest["status"], earlier["id"]) == ("open", closed["id"])


async def test_one_institutions_own_contracts_never_conflict(client, world):
    await synced(client, world, "chc_a", "P-A", A_NAME)
    row = contract_row(SEQ, institution="P-A", name=B_NAME, doctor_code="FD-2")
    row["contract_no"] = "C-P-A-second"
    r = await client.post("/v1/contracts/sync", json={"contracts": [row]}, headers=world.auth("chc_a"))
    assert r.json()["rejected"] == 0, r.text
    assert await conflicts(client, world) == []


async def test_concurrent_syncs_of_two_names_raise_one_conflict(client, world):
    results = await asyncio.gather(
        sync(client, world, "chc_a", "P-A", A_NAME), sync(client, world, "chc_b", "P-B", B_NAME)
    )
    assert [r.status_code for r in results] == [200, 200], [r.text for r in results]
    [conflict] = await conflicts(client, world)
    assert len(conflict["declarations"]) == 2


async def test_a_sync_in_progress_does_not_hold_up_a_booking_for_the_resident(
    client, world, pools, db, crypto
):
    """The conflict check locks the resident against other syncs only, not against bookings."""
    await synced(client, world, "chc_a", "P-A", A_NAME)
    resident_id = await db.run(lambda s: s.scalar(select(FamilyDoctorContract.resident_id)))
    actor = Actor.system("test", now=world.clock.now())
    async with db.sessionmaker() as held, held.begin():
        await note_declared_identity(session=held, actor=actor, crypto=crypto, resident_id=resident_id)
        r = await asyncio.wait_for(
            post_referral(
                client, world, booking(pools["CARD"][0]["slot_id"], SEQ, clock=world.clock, name=A_NAME)
            ),
            4,
        )
        assert r.status_code == 201, r.text


async def test_identity_conflict_evidence_and_logs_carry_no_id_number_or_name(client, world, db, caplog):
    caplog.set_level(logging.DEBUG)
    await synced(client, world, "chc_a", "P-A", A_NAME)
    await synced(client, world, "chc_b", "P-B", B_NAME)
    r = await client.get("/v1/supervision/identity-conflicts", headers=world.auth("commission"))
    [conflict] = r.json()["items"]
    r = await client.post(
        f"/v1/supervision/identity-conflicts/{conflict['id']}/acknowledge",
        json={"note": "asked both centres to check the ID card"},
        headers=world.auth("commission"),
    )
    assert r.status_code == 200 and r.json()["status"] == "acknowledged"
    masked_id = ID_NUMBER[0] + "*" * 16 + ID_NUMBER[-1]
    body = r.text + json.dumps(conflict)
    entries = list(
        await db.run(
            lambda s: s.scalars(
                select(AuditEntry).where(AuditEntry.action.like("identity_conflict%")).order_by(AuditEntry.id)
            )
        )
    )
    trail = json.dumps([[e.action, e.detail, e.reason] for e in entries], ensure_ascii=False)
    assert {"identity_conflict.raised", "identity_conflicts.read", "identity_conflict.acknowledged"} <= {
        e.action for e in entries
    }
    logs = "\n".join(rec.getMessage() for rec in caplog.records)
    assert caplog.records  # the requests were logged, so the check below looked at something
    for where, content in (("response", body), ("audit", trail), ("logs", logs)):
        for secret in (ID_NUMBER, masked_id, A_NAME, B_NAME):
            assert secret not in content, (where, secret)


async def test_identity_conflicts_are_shown_to_the_commission_of_the_region_only(client, world, crypto):
    await synced(client, world, "chc_a", "P-A", A_NAME)
    await synced(client, world, "chc_b", "P-B", B_NAME)
    [conflict] = await conflicts(client, world)
    assert [c["id"] for c in await conflicts(client, world, institution_id=world.ids["chc_b"])] == [
        conflict["id"]
    ]
    assert await conflicts(client, world, institution_id=world.ids["chc_far"]) == []
    await add_wuhu_key(world, crypto, "wuhu_commission", "commission")
    assert await conflicts(client, world, who="wuhu_commission") == []
    r = await client.get(
        f"/v1/supervision/identity-conflicts/{conflict['id']}", headers=world.auth("wuhu_commission")
    )
    assert (r.status_code, r.json()["code"]) == (404, "identity_conflict_not_found")
    r = await client.get("/v1/supervision/identity-conflicts", headers=world.auth("chc_a"))
    assert r.status_code == 403


# --- platform-only contracts ------------------------------------------------------------------


async def set_source(client, world, region: str, source: str, who: str = "commission") -> httpx.Response:
    return await client.put(
        f"/v1/regions/{region}/contract-source", json={"source": source}, headers=world.auth(who)
    )


async def test_by_default_centres_and_the_platform_both_sync(client, world):
    r = await client.get("/v1/regions/340102/contract-source", headers=world.auth("chc_a"))
    assert r.json() == {"region_code": "340102", "source": "any", "decided_by": None, "updated_at": None}
    await synced(client, world, "chc_a", "P-A", A_NAME)
    await synced(client, world, "platform", "P-A", A_NAME)


async def test_r8_platform_only_region_refuses_centre_syncs_and_takes_the_platforms(client, world, db):
    r = await set_source(client, world, "340100", "platform")
    assert r.status_code == 200, r.text
    assert (r.json()["source"], r.json()["decided_by"]) == ("platform", "340100")

    for who, institution in (("chc_a", "P-A"), ("chc_b", "P-B")):
        r = await sync(client, world, who, institution, A_NAME)
        assert r.status_code == 403, r.text
        assert r.json()["code"] == "contracts_platform_only"
    assert await db.run(lambda s: s.scalar(text("SELECT count(*) FROM family_doctor_contracts"))) == 0
    await synced(client, world, "platform", "P-A", A_NAME)
    await synced(client, world, "platform", "P-B", B_NAME)
    assert len(await conflicts(client, world)) == 1  # the platform's own declarations are still checked

    # A district may decide otherwise for itself: the most specific setting wins.
    r = await set_source(client, world, "340102", "any")
    assert r.json()["decided_by"] == "340102"
    await synced(client, world, "chc_a", "P-A", A_NAME)
    r = await sync(client, world, "chc_b", "P-B", B_NAME)
    assert r.json()["code"] == "contracts_platform_only"

    entries = await db.run(
        lambda s: s.scalars(
            select(AuditEntry).where(AuditEntry.action == "contract_source.set").order_by(AuditEntry.id)
        )
    )
    assert [e.detail for e in entries] == [
        {"region_code": "340100", "before": None, "after": "platform"},
        {"region_code": "340102", "before": None, "after": "any"},
    ]


async def test_contract_source_is_set_by_the_commission_of_the_region_only(client, world, crypto):
    await add_wuhu_key(world, crypto, "wuhu_commission", "commission")
    r = await set_source(client, world, "340100", "platform", who="wuhu_commission")
    assert (r.status_code, r.json()["code"]) == (403, "region_out_of_scope")
    r = await set_source(client, world, "340100", "platform", who="platform")
    assert r.status_code == 403
    r = await set_source(client, world, "340111", "platform")
    assert (r.status_code, r.json()["code"]) == (404, "region_not_found")
    r = await client.put(
        "/v1/regions/340100/contract-source", json={"source": "centres"}, headers=world.auth("commission")
    )
    assert r.status_code == 422
    r = await client.get("/v1/regions/340102/contract-source", headers=world.auth("chc_a"))
    assert r.json()["source"] == "any"


# --- the data migration ---------------------------------------------------------------------


async def test_migration_gives_existing_contracts_and_referrals_the_residents_name(owner_url, crypto):
    """Data written before revision 0012 (here: its columns dropped again) takes the resident's name."""
    import asyncpg

    url = make_url(owner_url)
    admin = url.set(database="postgres").render_as_string(hide_password=False).replace("+asyncpg", "")
    name = f"{url.database}_identity"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    target = url.set(database=name).render_as_string(hide_password=False)
    try:
        await upgrade(target)
        clock = ManualClock(START)
        settings = Settings(run_loops=False, log_json=False)
        app = create_app(settings, database_url=target, clock=clock, run_loops=False)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t"
            ) as client:
                world = await build_world(app.state.slotpool.db, crypto, clock)
                await push(client, world, [session_item("CARD-1", DAY, slots=10)])
                r = await sync(client, world, "chc_a", "P-A", A_NAME, phone="13800000001")
                assert r.status_code == 200, r.text
                [slot, *_] = await pool_slots(client, world)
                r = await post_referral(
                    client, world, booking(slot["slot_id"], SEQ, clock=world.clock, name=A_NAME), "chc_a"
                )
                assert r.status_code == 201, r.text
        await downgrade(target, "0010")
        await upgrade(target)
        database = Database(target, pool_size=1)
        try:
            contract = await database.run(lambda s: s.scalar(select(FamilyDoctorContract)))
            referral = await database.run(lambda s: s.scalar(select(Referral)))
        finally:
            await database.dispose()
        assert crypto.decrypt(contract.name_enc, column=CONTRACT_NAME) == A_NAME
        assert crypto.decrypt(contract.phone_enc, column=CONTRACT_PHONE) == "13800000001"
        assert crypto.decrypt(referral.resident_name_enc, column=REFERRAL_RESIDENT_NAME) == A_NAME
    finally:
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await conn.close()


async def test_r8_a_lower_tier_hospital_is_not_locked_out_by_whoever_registered_the_resident(client, world):
    """Hospital bookers have no contract: any name on record in force will do, not only the first."""
    await synced(client, world, "chc_b", "P-B", B_NAME)  # registers the resident under B's name
    await synced(client, world, "chc_a", "P-A", A_NAME)
    await push(client, world, [session_item("P1", DAY, slots=20)], who="provincial_hospital")
    await push(client, world, [session_item("X1", DAY, slots=2, title="attending")], who="district_hospital")
    slots = await pool_slots(client, world, who="district_as_booker")
    r = await client.post(
        "/v1/referrals",
        json=booking(slots[0]["slot_id"], SEQ, clock=world.clock, doctor_code="D-attending", name="王五"),
        headers=world.auth("district_as_booker"),
    )
    assert r.json()["code"] == "name_mismatch"
    r = await client.post(
        "/v1/referrals",
        json=booking(slots[0]["slot_id"], SEQ, clock=world.clock, doctor_code="D-attending", name=A_NAME),
        headers=world.auth("district_as_booker"),
    )
    assert r.status_code == 201, r.text
    assert r.json()["resident_name_masked"] == "张**"
