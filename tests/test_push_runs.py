"""A push of many sessions has the outcome of pushing them one at a time, in order (R1–R5, R13, R19).

The service applies a push set-based (``service/slots/batch.py``); these tests hold what it stores
and its answers to those of the same items pushed one per request, on another day laid out alike,
and count the statements a push costs. The reservation is one decision per department-day (R4),
so a later push of one session may move slots of an earlier one: the items' own outcomes
(result, version, errors) are compared push by push, the pool slots and shortfalls as the last
push left them, and each result of the push of many shows them so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select

from service.kit import db as kit_db
from service.models.registry import Department, Doctor
from service.models.slots import ClinicSession, Slot
from tests.factories import booking, pool_slots, push, session_item, sign

DAY = date(2026, 3, 10)
OTHER_DAY = date(2026, 3, 11)  # laid out as DAY; no push reaches its pool window late either

TITLES = ["attending", "chief", "resident", "associate_chief", "attending", "chief"]


def day_items(day: date, prefix: str) -> list[dict[str, Any]]:
    """Sessions of one department-day, of every size and title, two of them in the afternoon."""
    return [
        session_item(
            f"{prefix}{n}",
            day,
            title=title,
            doctor_code=f"D{n}",
            slots=[7, 20, 3, 12, 1, 16][n],
            minutes=[15, 10, 30, 5, 20, 15][n],
            period="afternoon" if n in (2, 5) else "morning",
        )
        for n, title in enumerate(TITLES)
    ]


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    """A result's own outcome, without what differs by day or by ID or what later pushes may move."""
    return {"result": result["result"], "version": result["version"], "errors": result["errors"]}


def shortfalls(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in s.items() if k != "service_date"} for s in result["shortfalls"]]


async def final_pools(db: Any, prefix: str) -> dict[str, tuple[list[int], list[int]]]:
    """Each session's pool slots (numbers and ids, by number) as stored, by HIS ID."""

    async def read(session: Any) -> dict[str, tuple[list[int], list[int]]]:
        rows = await session.execute(
            select(ClinicSession.external_id, Slot.number, Slot.id)
            .join(Slot, Slot.session_id == ClinicSession.id)
            .where(ClinicSession.external_id.startswith(prefix), Slot.status.in_(("reserved", "booked")))
            .order_by(Slot.number)
        )
        pools: dict[str, tuple[list[int], list[int]]] = {}
        for ext, number, slot_id in rows:
            numbers, ids = pools.setdefault(ext, ([], []))
            numbers.append(number)
            ids.append(slot_id)
        return pools

    result: dict[str, tuple[list[int], list[int]]] = await db.run(read)
    return result


def assert_results_show_the_final_state(results: list[dict[str, Any]], pools: dict[str, Any]) -> None:
    for r in results:
        if r["result"] != "rejected":
            assert (r["pool_slot_numbers"], r["pool_slot_ids"]) == pools.get(r["external_id"], ([], []))
    # Every result of the day shows the same (final) shortfalls of the day.
    assert len({repr(shortfalls(r)) for r in results if r["result"] != "rejected"}) == 1


async def stored(db: Any, prefix: str) -> list[tuple[Any, ...]]:
    """Each slot of the sessions named ``prefix...`` as stored, in id order (the selection's tie-break)."""

    async def read(session: Any) -> list[tuple[Any, ...]]:
        rows = await session.execute(
            select(
                ClinicSession.external_id,
                ClinicSession.status,
                ClinicSession.version,
                Slot.number,
                Slot.status,
            )
            .join(Slot, Slot.session_id == ClinicSession.id)
            .where(ClinicSession.external_id.startswith(prefix))
            .order_by(Slot.id)
        )
        return [(ext[len(prefix) :], *rest) for ext, *rest in rows]

    result: list[tuple[Any, ...]] = await db.run(read)
    return result


async def test_r1_a_push_of_many_sessions_reserves_as_pushes_of_one_each(client, world, db):
    together = await push(client, world, day_items(DAY, "T"))
    alone = [(await push(client, world, [item]))[0] for item in day_items(OTHER_DAY, "A")]
    assert [comparable(r) for r in together] == [comparable(r) for r in alone]
    assert sum(len(r["pool_slot_numbers"]) for r in together) == 12  # ceil(20 % of 59)
    assert await stored(db, "T") == await stored(db, "A")
    assert shortfalls(together[0]) == shortfalls(alone[-1])
    assert_results_show_the_final_state(together, await final_pools(db, "T"))


async def test_r19_a_session_pushed_twice_in_one_push_is_applied_in_order(client, world, db):
    def versions(day: date, prefix: str) -> list[dict[str, Any]]:
        first, second = day_items(day, prefix)[:2]
        again = session_item(f"{prefix}0", day, title="chief", doctor_code="D0", slots=9, version=2)
        stale = session_item(f"{prefix}1", day, slots=2, version=1)
        return [first, second, again, stale, again]

    together = await push(client, world, versions(DAY, "T"))
    alone = [(await push(client, world, [item]))[0] for item in versions(OTHER_DAY, "A")]
    assert [r["result"] for r in together] == ["created", "created", "updated", "unchanged", "unchanged"]
    assert [comparable(r) for r in together] == [comparable(r) for r in alone]
    assert await stored(db, "T") == await stored(db, "A")
    assert shortfalls(together[-1]) == shortfalls(alone[-1])
    assert_results_show_the_final_state(together, await final_pools(db, "T"))


async def test_r13_a_withdrawal_inside_a_push_is_applied_between_its_neighbours(client, world, db, clock):
    def items(day: date, prefix: str) -> list[dict[str, Any]]:
        first, second, third = day_items(day, prefix)[:3]
        withdrawn = session_item(f"{prefix}1", day, title="chief", doctor_code="D1", slots=20, version=2)
        withdrawn |= {"status": "withdrawn", "withdrawn_reason": "医生外出会诊"}
        return [first, second, withdrawn, third]

    together = await push(client, world, items(DAY, "T"))
    alone = [(await push(client, world, [item]))[0] for item in items(OTHER_DAY, "A")]
    assert [r["result"] for r in together] == ["created", "created", "withdrawn", "created"]
    assert [comparable(r) for r in together] == [comparable(r) for r in alone]
    assert await stored(db, "T") == await stored(db, "A")
    assert shortfalls(together[-1]) == shortfalls(alone[-1])
    assert_results_show_the_final_state(together, await final_pools(db, "T"))


async def test_r19_a_refused_item_leaves_nothing_of_itself_behind(client, world, db, clock):
    [first] = await push(client, world, [session_item("S1", DAY, slots=10)])
    await sign(client, world, [1])
    [slot] = [s for s in await pool_slots(client, world) if s["number"] == first["pool_slot_numbers"][0]]
    r = await client.post(
        "/v1/referrals", json=booking(slot["slot_id"], 1, clock=clock), headers=world.auth("chc_a")
    )
    assert r.status_code == 201, r.text

    moved = session_item("S1", DAY, slots=10, version=2, first_hour=9)  # moves the booked slot
    moved["department"]["name"] = "改名的科室"
    moved["doctor"]["name"] = "改名的医生"
    elsewhere = session_item("S2", DAY + timedelta(days=1), slots=10, doctor_code="D2", department="ORTH")
    elsewhere["department"]["name"] = "骨科"
    results = await push(client, world, [moved, elsewhere])
    assert [r["result"] for r in results] == ["rejected", "created"]
    assert {e["code"] for e in results[0]["errors"]} == {"booked_slot_changed"}

    async def names(session: Any) -> tuple[dict[str, str], dict[str, str], int]:
        departments = {d.code: d.name for d in await session.scalars(select(Department))}
        doctors = {d.code: d.name for d in await session.scalars(select(Doctor))}
        version = await session.scalar(select(ClinicSession.version).where(ClinicSession.external_id == "S1"))
        return departments, doctors, version

    departments, doctors, version = await db.run(names)
    assert departments["CARD"] == "心血管内科" and departments["ORTH"] == "骨科"
    assert doctors["D-associate_chief"] == "王医生"
    assert version == 1


@contextmanager
def counting(app: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every statement of the app's engine inside the block, through SQLAlchemy or its driver."""
    engine = app.state.slotpool.db.engine.sync_engine
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    for name in ("fetch", "execute", "copy"):
        original = getattr(kit_db.Driver, name)

        def counted(self: Any, sql: str, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            statements.append(sql)
            return _original(self, sql, *args, **kwargs)

        monkeypatch.setattr(kit_db.Driver, name, counted)
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)
        monkeypatch.undo()


def departments_days(sessions: int, prefix: str, version: int = 1) -> list[dict[str, Any]]:
    """``sessions`` sessions of 30 slots over four departments and three days."""
    return [
        session_item(
            f"{prefix}{n}",
            DAY + timedelta(days=n % 3),
            title=TITLES[n % len(TITLES)],
            doctor_code=f"D{n}",
            department=f"{prefix}DEP{n % 4}",  # each size its own departments: no other sessions
            slots=30,
            minutes=5,
            version=version,
        )
        for n in range(sessions)
    ]


async def test_a_push_costs_as_many_statements_for_60_sessions_as_for_2(app, client, world, monkeypatch):
    counts = {}
    for sessions, prefix in ((2, "F"), (60, "M")):
        for version in (1, 2):  # new sessions, then the same ones again with their slots changed
            items = departments_days(sessions, prefix, version)
            for item in items:
                for slot in item["slots"]:
                    slot["external_id"] += f"-v{version}"
            with counting(app, monkeypatch) as statements:
                results = await push(client, world, items)
            assert {r["result"] for r in results} == {"created" if version == 1 else "updated"}
            counts[(sessions, version)] = len(statements)
    assert counts[(2, 1)] == counts[(60, 1)], counts
    assert counts[(2, 2)] == counts[(60, 2)], counts
