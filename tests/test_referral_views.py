"""A page of referrals is read by a constant number of statements, however long it is.

Each referral's view (slot, session, hospital, department, booker, doctors, policy) comes
from one joined query for the whole page; the test counts the statements the app's engine
executes for a page of 5 and a page of 500.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Any

from sqlalchemy import event, insert, select

from service.kit.clock import local_datetime
from service.kit.crypto import Crypto
from service.kit.db import Database
from service.models.referrals import REFERRAL_RESIDENT_NAME, Referral
from service.models.residents import Resident
from service.models.slots import Slot
from tests.factories import booking, pool_slots, push, session_item, sign, synthetic_id, to_local

DAY = date(2026, 3, 21)
# A page costs at most this many statements: authentication and its rate-limit token, the
# lock timeout, the page, the views, the audit entry.
STATEMENT_BOUND = 12


@contextmanager
def counting(app: Any) -> Iterator[list[str]]:
    """The SQL statements the app's engine executes inside the block."""
    engine = app.state.slotpool.db.engine.sync_engine
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


async def book_one(client: Any, world: Any) -> dict[str, Any]:
    world.clock.set(local_datetime(DAY - timedelta(days=8), 9))
    await push(client, world, [session_item("S-VIEWS", DAY, slots=10)])
    await sign(client, world, [1])
    slots = await pool_slots(client, world)
    r = await client.post(
        "/v1/referrals", json=booking(slots[0]["slot_id"], 1, clock=world.clock), headers=world.auth("chc_a")
    )
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def copy_referral(db: Database, crypto: Crypto, reference: str, *, first: int, count: int) -> None:
    """``count`` more referrals like ``reference``, each with its own slot and resident, inserted in bulk."""

    async def work(session: Any) -> None:
        original = await session.scalar(select(Referral).where(Referral.reference == reference))
        slot = await session.get(Slot, original.slot_id)
        numbers = range(first, first + count)
        residents = await session.scalars(
            insert(Resident)
            .values(
                [
                    {
                        "id_index": hashlib.sha256(f"views-{n}".encode()).digest(),
                        "id_number_enc": crypto.encrypt(
                            synthetic_id("340102", seq=n), column="residents.id_number"
                        ),
                        "name_enc": crypto.encrypt(f"张{n}", column="residents.name"),
                        "created_at": original.booked_at,
                        "updated_at": original.booked_at,
                    }
                    for n in numbers
                ]
            )
            .returning(Resident.id)
        )
        slots = await session.scalars(
            insert(Slot)
            .values(
                [
                    {
                        "session_id": slot.session_id,
                        "resource_kind": slot.resource_kind,
                        "hospital_id": slot.hospital_id,
                        "number": 1000 + n,
                        "external_id": f"S-VIEWS-{1000 + n}",
                        "starts_at": slot.starts_at,
                        "ends_at": slot.ends_at,
                        "pool_opens_at": slot.pool_opens_at,
                        "public_at": slot.public_at,
                        "status": "booked",
                    }
                    for n in numbers
                ]
            )
            .returning(Slot.id)
        )
        copied = {
            c.key: getattr(original, c.key)
            for c in Referral.__table__.columns
            if c.key not in ("id", "reference", "slot_id", "resident_id", "resident_name_enc")
        }
        await session.execute(
            insert(Referral).values(
                [
                    {
                        **copied,
                        "reference": f"RV{n:08d}",
                        "slot_id": slot_id,
                        "resident_id": resident_id,
                        "resident_name_enc": crypto.encrypt(f"张{n}", column=REFERRAL_RESIDENT_NAME),
                    }
                    for n, slot_id, resident_id in zip(numbers, list(slots), list(residents), strict=True)
                ]
            )
        )

    await db.run(work)


async def listed(client: Any, app: Any, path: str, who: str) -> tuple[int, list[dict[str, Any]]]:
    with counting(app) as statements:
        r = await client.get(path, params={"limit": 500}, headers={"Authorization": who})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return len(statements), items


async def test_a_page_of_500_referrals_costs_as_many_statements_as_a_page_of_5(
    client, app, world, db, crypto
):
    first = await book_one(client, world)
    await copy_referral(db, crypto, first["reference"], first=2, count=4)
    primary = world.auth("chc_a")["Authorization"]
    hospital = world.auth("city_hospital")["Authorization"]

    few, items = await listed(client, app, "/v1/referrals", primary)
    assert len(items) == 5
    few_hospital, _ = await listed(client, app, "/v1/referrals", hospital)

    await copy_referral(db, crypto, first["reference"], first=6, count=495)
    many, items = await listed(client, app, "/v1/referrals", primary)
    assert len(items) == 500
    many_hospital, hospital_items = await listed(client, app, "/v1/referrals", hospital)
    assert len(hospital_items) == 500

    print(
        f"GET /v1/referrals: {few} statements for 5, {many} for 500 (hospital: {few_hospital}, {many_hospital})"
    )
    assert few == many <= STATEMENT_BOUND
    assert few_hospital == many_hospital <= STATEMENT_BOUND
    # Each item is still the whole answer, masked as before.
    last = items[-1]
    assert last["resident_name_masked"].startswith("张") and last["resident_name_masked"] != "张500"
    assert (
        last["resident_id_masked"] == first["resident_id_masked"][:-1] + synthetic_id("340102", seq=500)[-1]
    )
    assert last["verification_code"] == first["verification_code"]
    assert last["notice"] == {
        **first["notice"],
        "slot_number": last["slot"]["number"],
        "reference": last["reference"],
    }
    assert hospital_items[0]["verification_code"] is None


async def test_the_worklist_of_500_costs_as_many_statements_as_one_of_5(client, app, world, db, crypto):
    first = await book_one(client, world)
    await copy_referral(db, crypto, first["reference"], first=2, count=4)
    world.clock.set(to_local(first["slot"]["ends_at"]) + timedelta(hours=2))
    hospital = world.auth("city_hospital")["Authorization"]

    few, items = await listed(client, app, "/v1/hospital/worklist", hospital)
    assert len(items) == 5
    await copy_referral(db, crypto, first["reference"], first=6, count=495)
    many, items = await listed(client, app, "/v1/hospital/worklist", hospital)
    assert len(items) == 500

    print(f"GET /v1/hospital/worklist: {few} statements for 5, {many} for 500")
    assert few == many <= STATEMENT_BOUND
