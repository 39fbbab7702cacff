"""The append-only audit trail (R15): what it refuses, what it records, and the commission's queries."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import sqlalchemy.exc
from sqlalchemy import select, text

from service.kit.crypto import mask_id_number
from service.models.attendance import NoShowBar
from service.models.audit import AuditEntry
from service.models.referrals import Referral
from tests.factories import add_wuhu_key, book, booking, pool_slots, push, session_item, sign, synthetic_id

DAY = date(2026, 3, 10)
ID1 = synthetic_id("340102", seq=1)
ID2 = synthetic_id("340102", seq=2)


@pytest.fixture
async def booked(client, world, clock) -> dict[str, Any]:
    """Residents 1 and 2 signed with chc_a's FD-1 and booked on 10 March, one minute apart."""
    await push(client, world, [session_item("S1", DAY, slots=10)])
    await sign(client, world, [1, 2])
    slots = await pool_slots(client, world)
    references = {}
    for seq, slot in ((1, slots[0]), (2, slots[1])):
        clock.advance(timedelta(minutes=1))
        references[seq] = (await book(client, world, booking(slot["slot_id"], seq, clock=clock)))["reference"]
    return references


async def resident_of(db, reference: str) -> int:
    value: int = await db.run(
        lambda s: s.scalar(select(Referral.resident_id).where(Referral.reference == reference))
    )
    return value


async def entries(db, action: str) -> list[AuditEntry]:
    rows = await db.run(
        lambda s: s.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id))
    )
    return list(rows)


async def query(client, world, who: str = "commission", **params: Any) -> Any:
    r = await client.get("/v1/audit", params={"limit": 500, **params}, headers=world.auth(who))
    assert r.status_code == 200, r.text
    return r.json()


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


# --- append-only --------------------------------------------------------------------------------


async def test_r15_audit_table_refuses_update_delete_and_truncate_from_the_service_role(
    client, world, booked, db
):
    """``db`` connects exactly as the service does (the runtime role): it lacks the privilege,
    and the owner's triggers would refuse it anyway."""
    before = await db.run(lambda s: s.scalar(text("SELECT count(*) FROM audit_entries")))
    assert before > 0
    for statement in (
        "UPDATE audit_entries SET reason = 'rewritten'",
        "DELETE FROM audit_entries",
        "TRUNCATE audit_entries",
        # Removing residents would cascade into the trail: refused as well.
        "TRUNCATE residents CASCADE",
    ):
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="permission denied"):
            await db.run(lambda s, sql=statement: s.execute(text(sql)))
    assert await db.run(lambda s: s.scalar(text("SELECT count(*) FROM audit_entries"))) == before
    # Appending is what the role may do.
    await db.run(
        lambda s: s.execute(
            text("INSERT INTO audit_entries (at, actor, action, detail) VALUES (now(), 't', 't', '{}')")
        )
    )


async def test_r15_a_role_granted_every_privilege_still_cannot_rewrite_the_trail(world, booked, owner_url):
    """A role that an operator wrongly granted every privilege is still held by the triggers."""
    role = f"slotpool_rt_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(_plain(owner_url))
    try:
        await conn.execute(f"CREATE ROLE {role} NOLOGIN")
        await conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        await conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON audit_entries TO {role}")
        for statement in (
            "UPDATE audit_entries SET reason = 'x'",
            "DELETE FROM audit_entries",
            "TRUNCATE audit_entries",
        ):
            async with conn.transaction():
                await conn.execute(f"SET LOCAL ROLE {role}")
                assert await conn.fetchval("SELECT current_user") == role
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                    await conn.execute(statement)
        assert await conn.fetchval("SELECT count(*) FROM audit_entries") > 0
    finally:
        await conn.execute(f"DROP OWNED BY {role}")
        await conn.execute(f"DROP ROLE {role}")
        await conn.close()


# --- every read of personal data leaves an entry ---------------------------------------------------


async def test_r15_reading_one_referral_is_recorded(client, world, booked, db):
    r = await client.get(f"/v1/referrals/{booked[1]}", headers=world.auth("city_hospital"))
    assert r.status_code == 200
    [entry] = await entries(db, "referral.read")
    assert entry.resident_id == await resident_of(db, booked[1])
    assert entry.actor_org_id == world.ids["city_hospital"]
    assert entry.request_id == r.headers["x-request-id"]
    # Refused reads show nothing and record nothing.
    r = await client.get(f"/v1/referrals/{booked[1]}", headers=world.auth("chc_b"))
    assert r.status_code == 404
    assert len(await entries(db, "referral.read")) == 1


async def test_r15_a_list_read_is_one_entry_naming_every_resident(client, world, booked, db):
    r = await client.get("/v1/referrals", headers=world.auth("chc_a"))
    assert len(r.json()["items"]) == 2
    [entry] = await entries(db, "referrals.listed")
    residents = sorted([await resident_of(db, booked[1]), await resident_of(db, booked[2])])
    assert entry.detail["resident_ids"] == residents
    assert entry.resident_id is None
    # An empty page showed no one.
    await client.get("/v1/referrals", params={"status": "cancelled"}, headers=world.auth("chc_a"))
    assert len(await entries(db, "referrals.listed")) == 1


async def test_r15_worklist_and_bar_list_reads_are_recorded(client, world, booked, db, clock):
    clock.set(datetime.fromisoformat("2026-03-10T12:00:00+08:00"))
    r = await client.get("/v1/hospital/worklist", headers=world.auth("city_hospital"))
    assert len(r.json()["items"]) == 2
    [entry] = await entries(db, "referrals.listed")
    assert (entry.detail["via"], len(entry.detail["referral_ids"])) == ("worklist", 2)

    resident = await resident_of(db, booked[1])
    referral = await db.run(lambda s: s.scalar(select(Referral).where(Referral.reference == booked[1])))

    async def bar(session: Any) -> None:
        session.add(
            NoShowBar(
                resident_id=resident,
                hospital_id=referral.hospital_id,
                policy_id=referral.policy_id,
                starts_on=DAY,
                ends_on=DAY + timedelta(days=30),
                trigger_referral_ids=[referral.id],
                created_at=clock.now(),
            )
        )

    await db.run(bar)
    r = await client.get("/v1/no-show-bars", headers=world.auth("commission"))
    assert len(r.json()["items"]) == 1
    [entry] = await entries(db, "no_show_bars.listed")
    assert entry.resident_id == resident


# --- the commission's queries ------------------------------------------------------------------------


async def test_r15_query_by_resident_id_number_finds_every_entry_about_them(client, world, booked, db):
    await client.get(f"/v1/referrals/{booked[1]}", headers=world.auth("city_hospital"))
    await client.get("/v1/referrals", headers=world.auth("chc_a"))
    one = await resident_of(db, booked[1])

    r = await client.get("/v1/audit", params={"resident_id_number": ID1}, headers=world.auth("commission"))
    assert r.status_code == 200, r.text
    page = r.json()
    actions = [e["action"] for e in page["items"]]
    assert actions == ["referrals.listed", "referral.read", "referral.booked", "contract.synced"]
    for e in page["items"]:
        assert e["resident_id"] == one or one in e["detail"]["resident_ids"]
    assert {e["resident_id_masked"] for e in page["items"] if e["resident_id"]} == {mask_id_number(ID1)}
    assert ID1 not in r.text and ID2 not in r.text

    # The query itself is a read of personal data: recorded, without the ID number.
    [queried] = await entries(db, "audit.queried")
    assert queried.resident_id == one
    assert queried.actor_org_id == world.ids["commission"]
    assert queried.detail["entries"] == 4
    assert ID1 not in str(queried.detail)
    page = await query(client, world, resident_id_number=ID1, action="audit.queried")
    assert [e["id"] for e in page["items"]] == [queried.id]


async def test_r15_query_for_an_unknown_resident_is_empty_and_still_recorded(client, world, booked, db):
    unknown = synthetic_id("340102", seq=99)
    assert (await query(client, world, resident_id_number=unknown))["items"] == []
    [queried] = await entries(db, "audit.queried")
    assert queried.detail["filters"]["resident"] == "not_found"
    assert unknown not in str(queried.detail)


async def test_r15_query_refuses_an_invalid_id_number(client, world):
    r = await client.get(
        "/v1/audit", params={"resident_id_number": "340102195804120019"}, headers=world.auth("commission")
    )
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_id_number"


async def test_r15_query_by_actor(client, world, booked, db):
    await client.get(f"/v1/referrals/{booked[2]}", headers=world.auth("city_hospital"))
    hospital_client = (await client.get("/v1/me", headers=world.auth("city_hospital"))).json()["client_id"]
    page = await query(client, world, actor_client_id=hospital_client)
    assert [e["action"] for e in page["items"]] == ["referral.read"]
    page = await query(client, world, actor_org_id=world.ids["chc_a"])
    assert [e["action"] for e in page["items"]] == ["referral.booked", "referral.booked"]
    assert {e["actor_org_id"] for e in page["items"]} == {world.ids["chc_a"]}


async def test_r15_query_by_time_range(client, world, booked, db, clock):
    booked_at = [e.at for e in await entries(db, "referral.booked")]
    page = await query(
        client,
        world,
        action="referral.booked",
        **{"from": booked_at[1].isoformat(), "to": (clock.now() + timedelta(minutes=1)).isoformat()},
    )
    assert [datetime.fromisoformat(e["at"]) for e in page["items"]] == [booked_at[1]]
    page = await query(client, world, **{"from": booked_at[0].isoformat(), "to": booked_at[1].isoformat()})
    assert [e["action"] for e in page["items"]] == ["referral.booked"]
    r = await client.get(
        "/v1/audit", params={"from": "2026-03-02T09:00:00"}, headers=world.auth("commission")
    )
    assert r.status_code == 422
    assert r.json()["code"] == "naive_datetime"


async def test_r15_query_pages_with_a_cursor(client, world, booked, db):
    for reference in booked.values():
        await client.get(f"/v1/referrals/{reference}", headers=world.auth("chc_a"))
        await client.get("/v1/referrals", headers=world.auth("chc_a"))
    everything = [e["id"] for e in (await query(client, world, actor_org_id=world.ids["chc_a"]))["items"]]
    assert len(everything) == 6
    assert everything == sorted(everything, reverse=True)
    seen, cursor = [], None
    while True:
        params = {"actor_org_id": world.ids["chc_a"], "limit": 4, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/audit", params=params, headers=world.auth("commission"))).json()
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == everything
    r = await client.get("/v1/audit", params={"cursor": "bm9wZQ"}, headers=world.auth("commission"))
    assert r.json()["code"] == "invalid_cursor"


async def test_r15_query_is_scoped_to_the_commissions_region(client, world, booked, db, crypto, clock):
    await add_wuhu_key(world, crypto, "wuhu_commission", "commission")
    assert (await query(client, world, who="wuhu_commission"))["items"] == []
    assert (await query(client, world, who="wuhu_commission", resident_id_number=ID1))["items"] == []
    assert len((await query(client, world, action="referral.booked"))["items"]) == 2


async def test_r15_only_the_commission_reads_the_trail(client, world):
    r = await client.get("/v1/audit", headers=world.auth("city_hospital"))
    assert r.status_code == 403
    assert r.json()["code"] == "wrong_role"


# --- the search in a body (POST /v1/audit/search) ------------------------------------------------


async def search(client, world, who: str = "commission", **body: Any) -> Any:
    r = await client.post("/v1/audit/search", json={"limit": 500, **body}, headers=world.auth(who))
    assert r.status_code == 200, r.text
    return r.json()


def without_query_entries(page: Any) -> list[Any]:
    # Each query records itself, so the two forms see each other's audit.queried entries.
    return [e for e in page["items"] if e["action"] != "audit.queried"]


async def test_r15_search_by_resident_keeps_the_id_number_out_of_the_url(client, world, booked, db):
    sent: list[str] = []

    async def note(request):
        sent.append(str(request.url))

    client.event_hooks["request"].append(note)
    page = await search(client, world, resident_id_number=ID1)
    assert [e["action"] for e in page["items"]] == ["referral.booked", "contract.synced"]
    assert {e["resident_id_masked"] for e in page["items"]} == {mask_id_number(ID1)}
    assert sent == ["http://slotpool.test/v1/audit/search"]
    assert ID1 not in sent[0]


async def test_r15_search_answers_as_the_query_form_does(client, world, booked, db, clock):
    for reference in booked.values():
        await client.get(f"/v1/referrals/{reference}", headers=world.auth("chc_a"))
    filters = {
        "resident_id_number": ID2,
        "actor_org_id": world.ids["chc_a"],
        "from": "2026-03-02T09:00:00+08:00",
        "to": "2026-03-03T00:00:00+08:00",
    }
    by_query = without_query_entries(await query(client, world, **filters))
    by_body = without_query_entries(await search(client, world, **filters))
    assert by_body == by_query
    assert {e["action"] for e in by_body} == {"referral.booked", "referral.read"}
    by_action = await search(client, world, action="referral.booked", actor_client_id=None)
    assert len(by_action["items"]) == 2


async def test_r15_search_pages_with_the_same_cursor(client, world, booked, db):
    for reference in booked.values():
        await client.get(f"/v1/referrals/{reference}", headers=world.auth("chc_a"))
    everything = [e["id"] for e in (await search(client, world, actor_org_id=world.ids["chc_a"]))["items"]]
    assert len(everything) == 4
    seen, cursor = [], None
    while True:
        page = await search(client, world, actor_org_id=world.ids["chc_a"], limit=3, cursor=cursor)
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == everything
    # A cursor from one form pages the other.
    first = await search(client, world, actor_org_id=world.ids["chc_a"], limit=3)
    rest = await query(client, world, actor_org_id=world.ids["chc_a"], cursor=first["next_cursor"])
    assert [e["id"] for e in first["items"] + rest["items"]] == everything


async def test_r15_search_refuses_what_the_query_form_refuses(client, world):
    for body, code in [
        ({"resident_id_number": "340102195804120010"}, "invalid_id_number"),
        ({"from": "2026-03-02T09:00:00"}, "naive_datetime"),
        ({"cursor": "bm9wZQ"}, "invalid_cursor"),
        ({"limit": 501}, "invalid_request"),
        ({"unknown_filter": 1}, "invalid_request"),
    ]:
        r = await client.post("/v1/audit/search", json=body, headers=world.auth("commission"))
        assert (r.status_code, r.json()["code"]) == (422, code), body


async def test_r15_search_is_scoped_and_recorded_like_the_query(client, world, booked, db, crypto):
    await add_wuhu_key(world, crypto, "wuhu_commission", "commission")
    assert (await search(client, world, who="wuhu_commission", resident_id_number=ID1))["items"] == []
    r = await client.post("/v1/audit/search", json={}, headers=world.auth("chc_a"))
    assert (r.status_code, r.json()["code"]) == (403, "wrong_role")
    recorded = await entries(db, "audit.queried")
    assert len(recorded) == 1
    assert recorded[0].detail["filters"]["resident"] is not None
    assert ID1 not in str(recorded[0].detail)


def test_r15_the_query_form_is_deprecated_in_openapi(app):
    paths = app.openapi()["paths"]
    assert paths["/v1/audit"]["get"].get("deprecated") is True
    assert "deprecated" not in paths["/v1/audit/search"]["post"]
