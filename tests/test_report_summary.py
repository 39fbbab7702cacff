"""The closed-day summary answers exactly what counting live answers, whatever wrote after the closing.

The property: for any range, granularity, group and filter, the report served from the
summary (closed days) and the live counts (open days) equals the report counted live over
the whole range (``use_summary=False``, the statement from before the summary), figure for
figure. A random walk of the writes a hospital, a family doctor and the jobs make (pushes of
new and old days, re-pushes that change titles, slots and shortfalls, withdrawals, removals,
bookings, cancellations, releases, attendance and its corrections), interleaved with closings
of days, checks it after every step on random ranges that mix closed and open days, and
checks that the summary's rows equal a recount from the sources.

The closing's locks are tested apart, with the two orders a closing and a writer of the
same day can meet in.
"""

from __future__ import annotations

import asyncio
import random
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from service.kit.clock import local_datetime
from service.reports.schemas import ComplianceReport
from service.reports.service import compliance_report, hospitals_in_scope, ratio_json
from service.reports.summary import close_days, close_next_day, read_window
from service.slots.release import release_due_slots
from tests.factories import (
    TEST_POLICY,
    add_alliance,
    booking,
    pool_slots,
    push,
    session_item,
    sign,
    until_a_session_waits_on_a_lock,
)

FIRST = date(2026, 3, 27)  # a Friday: the days cross a week and a month
DAYS = [FIRST + timedelta(days=i) for i in range(10)]  # to Sunday 5 April
HOSPITALS = ("city_hospital", "district_hospital", "provincial_hospital")
RESIDENTS = 80


# --- comparing the two ways of counting --------------------------------------------------------


async def live_report(db, world, params: dict[str, Any]) -> dict[str, Any]:
    """The report counted live over the whole range, through the service."""

    async def work(session: Any) -> dict[str, Any]:
        ids = await hospitals_in_scope(
            session=session,
            commission_region="340000",
            hospital_id=params.get("hospital_id"),
            region=params.get("region"),
            alliance_id=params.get("alliance_id"),
        )
        report = await compliance_report(
            session=session,
            hospital_ids=ids,
            date_from=date.fromisoformat(params["from"]),
            date_to=date.fromisoformat(params["to"]),
            granularity=params.get("granularity", "day"),
            group=params.get("group", "hospital"),
            region_level=params.get("region_level", "city"),
            resource_kind=params.get("resource_kind", "outpatient"),
            alliance_id=params.get("alliance_id"),
            now=world.clock.now(),
            use_summary=False,
        )
        return report.model().model_dump(mode="json")

    return await db.run(work)


async def assert_same_report(client, db, world, params: dict[str, Any]) -> dict[str, Any]:
    """The API's answer (summary for the closed days) equals the live count, field for field."""
    r = await client.get("/v1/reports/compliance", params=params, headers=world.auth("commission"))
    assert r.status_code == 200, r.text
    served = ComplianceReport.model_validate_json(r.content).model_dump(mode="json")
    assert r.json() == served  # the JSON is exactly the schema's, nothing more or less
    live = await live_report(db, world, params)
    served.pop("generated_at")
    live.pop("generated_at")
    assert served == live, params
    return served


SUMMARY_SQL = {
    "report_hospital_days": "SELECT * FROM report_hospital_days ORDER BY hospital_id, service_date, resource_kind",
    "report_department_days": "SELECT * FROM report_department_days "
    "ORDER BY hospital_id, service_date, resource_kind, department_id",
}


async def assert_summary_is_a_recount(db) -> int:
    """The summary's rows equal the rows a recount of every closed day writes; the recount is rolled back."""
    async with db.sessionmaker() as session:
        window = await read_window(session=session)
        kept = {
            name: [tuple(r) for r in await session.execute(text(sql))] for name, sql in SUMMARY_SQL.items()
        }
        if window is None:
            assert kept == {name: [] for name in SUMMARY_SQL}
            await session.rollback()
            return 0
        await session.execute(
            text(
                "SELECT report_days_refresh(array_agg(hospital_id), array_agg(service_date), "
                "array_agg(resource_kind), false) FROM ("
                " SELECT hospital_id, service_date, resource_kind::text FROM clinic_sessions"
                " WHERE service_date BETWEEN :f AND :t"
                " UNION SELECT hospital_id, service_date, resource_kind::text FROM reservation_shortfalls"
                " WHERE service_date BETWEEN :f AND :t) k"
            ),
            {"f": window.closed_from, "t": window.closed_through},
        )
        recount = {
            name: [tuple(r) for r in await session.execute(text(sql))] for name, sql in SUMMARY_SQL.items()
        }
        await session.rollback()
    assert kept == recount
    return len(kept["report_department_days"])


def random_params(rng: random.Random, world) -> dict[str, Any]:
    first = FIRST + timedelta(days=rng.randint(-4, 10))
    last = first + timedelta(days=rng.randint(0, 12))
    params: dict[str, Any] = {
        "from": first.isoformat(),
        "to": last.isoformat(),
        "granularity": rng.choice(["day", "week", "month"]),
        "group": rng.choice(["hospital", "hospital", "department", "region", "alliance"]),
    }
    if params["group"] == "region":
        params["region_level"] = rng.choice(["province", "city", "county"])
    if rng.random() < 0.25:
        params["hospital_id"] = world.ids[rng.choice(HOSPITALS)]
    if rng.random() < 0.05:
        params["resource_kind"] = "examination"
    return params


# --- the walk ------------------------------------------------------------------------------------


class Walk:
    """What the walk pushed and booked, so each step picks something that exists."""

    def __init__(self, client: Any, world: Any, db: Any, rng: random.Random) -> None:
        self.client, self.world, self.db, self.rng = client, world, db, rng
        self.sessions: dict[tuple[str, str], dict[str, Any]] = {}  # (hospital, external id) -> state
        self.referrals: dict[str, dict[str, Any]] = {}  # reference -> day, hospital, status
        self.next_resident = 1
        self.next_session = 1

    def at(self, when: Any) -> None:
        self.world.clock.set(when)

    async def push_item(self, who: str, item: dict[str, Any]) -> dict[str, Any]:
        [result] = await push(self.client, self.world, [item], who=who)
        return result

    async def new_session(self, day: date | None = None) -> None:
        day = day or self.rng.choice(DAYS)
        who = self.rng.choice(HOSPITALS)
        external = f"S{self.next_session}"
        self.next_session += 1
        title = self.rng.choice(["chief", "associate_chief", "attending", "attending"])
        department = self.rng.choice(["CARD", "CARD", "NEUR"])
        state = {"day": day, "version": 1, "title": title, "department": department, "who": who}
        state["slots"] = self.rng.randint(3, 10)
        self.at(local_datetime(day - timedelta(days=8), 7) if self.rng.random() < 0.8 else self.late(day))
        item = self.item(external, state)
        if self.rng.random() < 0.1:  # announced and withdrawn at once: a session with no slot
            item.update(status="withdrawn", slots=[], withdrawn_reason="停诊")
            state["status"] = "withdrawn"
        result = await self.push_item(who, item)
        if result["result"] in ("created", "withdrawn"):
            state["id"] = result["session_id"]
            self.sessions[(who, external)] = state

    def late(self, day: date) -> Any:
        """Some time after the day: a push, a withdrawal or a removal made late."""
        return local_datetime(day + timedelta(days=self.rng.randint(1, 6)), 10)

    def item(self, external: str, state: dict[str, Any]) -> dict[str, Any]:
        return session_item(
            external,
            state["day"],
            title=state["title"],
            doctor_code=f"D-{external}",
            department=state["department"],
            specialty="neurology" if state["department"] == "NEUR" else "cardiology",
            slots=state["slots"],
            version=state["version"],
        )

    def live_sessions(self) -> list[tuple[tuple[str, str], dict[str, Any]]]:
        return [(k, s) for k, s in self.sessions.items() if s.get("status", "active") == "active"]

    async def repush(self) -> None:
        """A new version of a session: another title (R4) or another number of slots."""
        if not (choices := self.live_sessions()):
            return
        (who, external), state = self.rng.choice(choices)
        changed = dict(state, version=state["version"] + 1)
        if self.rng.random() < 0.5:
            changed["title"] = self.rng.choice(["chief", "attending"])
        else:
            changed["slots"] = self.rng.randint(3, 12)
        self.at(
            self.rng.choice([local_datetime(state["day"] - timedelta(days=9), 7), self.late(state["day"])])
        )
        result = await self.push_item(who, self.item(external, changed))
        if result["result"] == "updated":
            self.sessions[(who, external)] = changed

    async def withdraw(self) -> None:
        if not (choices := self.live_sessions()):
            return
        (who, external), state = self.rng.choice(choices)
        item = {**self.item(external, state), "version": state["version"] + 1, "status": "withdrawn"}
        item.update(slots=[], withdrawn_reason="专家外出")
        self.at(self.late(state["day"]) if self.rng.random() < 0.7 else local_datetime(state["day"], 7))
        result = await self.push_item(who, item)
        assert result["result"] == "withdrawn", result
        state.update(status="withdrawn", version=state["version"] + 1)
        self.cancel_referrals_of(state["day"], who)

    async def remove(self) -> None:
        if not self.sessions:
            return
        (who, _), state = self.rng.choice(list(self.sessions.items()))
        if state.get("status") == "removed":
            return
        self.at(self.late(state["day"]))
        by_commission = self.rng.random() < 0.5
        r = await self.client.delete(
            f"/v1/sessions/{state['id']}" if by_commission else f"/v1/hospital/sessions/{state['id']}",
            params={"reason": "推送错误"},
            headers=self.world.auth("commission" if by_commission else who),
        )
        assert r.status_code == 200, r.text
        state["status"] = "removed"
        self.cancel_referrals_of(state["day"], who, references=r.json()["cancelled_referrals"])

    def cancel_referrals_of(self, day: date, who: str, references: list[str] | None = None) -> None:
        # Which referrals a withdrawal cancelled is the server's business; the walk only stops
        # choosing them for attendance when it knows, and a refused report is a valid step too.
        for reference in references or []:
            self.referrals[reference]["status"] = "cancelled"

    async def book(self) -> None:
        day = self.rng.choice(DAYS)
        self.at(local_datetime(day - timedelta(days=8), 12))  # inside the pool window (R5, R6)
        who = self.rng.choice(["city_hospital", "city_hospital", "provincial_hospital"])
        free = await pool_slots(
            self.client, self.world, hospital_id=self.world.ids[who], service_date=day.isoformat()
        )
        if not free:
            return
        seq = self.next_resident % RESIDENTS + 1
        self.next_resident += 1
        slot = self.rng.choice(free)
        r = await self.client.post(
            "/v1/referrals",
            json=booking(slot["slot_id"], seq, clock=self.world.clock),
            headers=self.world.auth("chc_a"),
        )
        if r.status_code == 201:
            self.referrals[r.json()["reference"]] = {"day": day, "who": who, "status": "booked"}

    def standing(self) -> list[tuple[str, dict[str, Any]]]:
        return [(ref, r) for ref, r in self.referrals.items() if r["status"] == "booked"]

    async def cancel(self) -> None:
        if not (choices := self.standing()):
            return
        reference, referral = self.rng.choice(choices)
        # Before the cut-off (R12): a closed day only in the walk's moved clock, which the summary ignores.
        self.at(local_datetime(referral["day"] - timedelta(days=self.rng.choice([8, 6])), 13))
        r = await self.client.post(
            f"/v1/referrals/{reference}/cancel", json={"reason": "病情好转"}, headers=self.world.auth("chc_a")
        )
        if r.status_code == 200:
            referral["status"] = "cancelled"

    async def attendance(self) -> None:
        if not (choices := self.standing()):
            return
        reference, referral = self.rng.choice(choices)
        self.at(local_datetime(referral["day"] + timedelta(days=self.rng.randint(0, 5)), 18))
        outcome = self.rng.choice(["attended", "attended", "no_show"])
        r = await self.client.post(
            "/v1/hospital/attendance",
            json={"reports": [{"reference": reference, "outcome": outcome}]},
            headers=self.world.auth(referral["who"]),
        )
        assert r.status_code == 200, r.text

    async def release(self) -> None:
        day = self.rng.choice(DAYS)
        self.at(local_datetime(day - timedelta(days=7), 9))
        await release_due_slots(self.db, self.world.clock)

    async def orphan_shortfall(self) -> None:
        """A shortfall recorded for a department-day that has no session left (one removed after a
        late push leaves its lead-time row while another session stood): it counts only in a
        period that has sessions."""
        day = self.rng.choice(DAYS)

        async def work(session: Any) -> None:
            departments = (
                await session.execute(text("SELECT id, hospital_id FROM departments ORDER BY id"))
            ).all()
            if not departments:
                return
            department, hospital = self.rng.choice(departments)
            await session.execute(
                text(
                    "INSERT INTO reservation_shortfalls (department_id, service_date, resource_kind, kind,"
                    " hospital_id, required, actual, policy_id, recorded_at)"
                    " SELECT :d, :day, 'outpatient', 'lead_time', :h, 1440, 0, min(id), now() FROM policies"
                    " ON CONFLICT DO NOTHING"
                ),
                {"d": department, "h": hospital, "day": day},
            )

        await self.db.run(work)

    async def close(self) -> None:
        day = self.rng.choice([*DAYS, DAYS[-1] + timedelta(days=2)])
        self.at(local_datetime(day, 0, 30))
        await close_days(self.db, self.world.clock)

    async def step(self) -> str:
        name = self.rng.choices(
            [
                "new_session",
                "repush",
                "withdraw",
                "remove",
                "book",
                "cancel",
                "attendance",
                "release",
                "close",
            ],
            weights=[3, 3, 1, 1, 6, 2, 4, 1, 2],
        )[0]
        await getattr(self, name)()
        return name


@pytest.fixture
async def walk_world(client, world, db) -> Any:
    await sign(client, world, list(range(1, RESIDENTS + 1)))
    await add_alliance(db, "H-CITY", ["H-DIST", "P-A"])
    # A second version of test-city governs April: a month of the walk spans both.
    body = {k: str(v) if isinstance(v, Decimal | date) else v for k, v in TEST_POLICY.items()}
    body["effective_from"] = "2026-04-01"
    r = await client.post("/v1/policies", json=body, headers=world.auth("commission"))
    assert r.status_code == 201, r.text
    return world


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_summary_answers_what_live_counting_answers_after_any_write(client, db, walk_world, seed):
    world = walk_world
    rng = random.Random(seed)
    walk = Walk(client, world, db, rng)
    for day in DAYS:
        for _ in range(2):
            await walk.new_session(day)
    # Close part of the days at once, so that most steps write a day already closed.
    walk.at(local_datetime(DAYS[rng.randint(3, 7)], 0, 30))
    assert await close_days(db, world.clock) > 0
    steps: list[str] = []
    closed_rows = 0
    for _ in range(45):
        steps.append(await walk.step())
        closed_rows = max(closed_rows, await assert_summary_is_a_recount(db))
        for _ in range(2):
            await assert_same_report(client, db, world, random_params(rng, world))
    # Whole ranges too, in every shape, once the walk is over.
    span = {"from": (FIRST - timedelta(days=3)).isoformat(), "to": (DAYS[-1] + timedelta(days=3)).isoformat()}
    for granularity in ("day", "week", "month"):
        for group in ("hospital", "department", "region", "alliance"):
            await assert_same_report(client, db, world, {**span, "granularity": granularity, "group": group})
    # The walk did what it is for: days were closed, and every kind of write happened.
    window = await db.run(lambda s: read_window(session=s))
    assert window is not None and closed_rows > 0
    assert {"book", "attendance", "repush"} <= set(steps), steps


async def test_a_late_write_to_a_closed_day_shows_in_the_next_report(client, world, db):
    """Attendance reported after the day closed: the summary row changes in the same transaction."""
    await sign(client, world, [1])
    day = date(2026, 3, 10)
    [pushed] = await push(client, world, [session_item("S1", day)])
    free = await pool_slots(client, world, service_date=day.isoformat())
    r = await client.post("/v1/referrals", json=booking(free[0]["slot_id"], 1, clock=world.clock),
                          headers=world.auth("chc_a"))  # fmt: skip
    assert r.status_code == 201, r.text
    reference = r.json()["reference"]
    world.clock.set(local_datetime(day + timedelta(days=2), 1))
    assert await close_days(db, world.clock) >= 2  # 11 March back to 10 March
    params = {"from": day.isoformat(), "to": day.isoformat()}
    [row] = (await assert_same_report(client, db, world, params))["rows"]
    assert (row["pool_bookings"], row["attended"], row["offered"]) == (1, 0, 10)

    async def summary_attended(session: Any) -> int:
        value: int = await session.scalar(text("SELECT attended FROM report_hospital_days"))
        return value

    assert await db.run(summary_attended) == 0
    r = await client.post("/v1/hospital/attendance", json={"reports": [{"reference": reference, "outcome": "attended"}]},
                          headers=world.auth("city_hospital"))  # fmt: skip
    assert r.status_code == 200, r.text
    assert await db.run(summary_attended) == 1
    [row] = (await assert_same_report(client, db, world, params))["rows"]
    assert row["attended"] == 1

    r = await client.delete(f"/v1/hospital/sessions/{pushed['session_id']}", params={"reason": "推送错误"},
                            headers=world.auth("city_hospital"))  # fmt: skip
    assert r.status_code == 200, r.text
    assert (await assert_same_report(client, db, world, params))[
        "rows"
    ] == []  # a removed session counts nowhere
    assert await db.run(lambda s: s.scalar(text("SELECT count(*) FROM report_hospital_days"))) == 0


async def test_the_job_closes_the_days_before_today_and_back_to_the_first_session(client, world, db):
    days = [date(2026, 2, 20), date(2026, 3, 10), date(2026, 3, 20)]
    await push(client, world, [session_item(f"S{i}", d) for i, d in enumerate(days)], days_ahead=0)
    world.clock.set(local_datetime(date(2026, 3, 15), 0, 5))
    closed = await close_days(db, world.clock)
    window = await db.run(lambda s: read_window(session=s))
    assert window is not None and (window.closed_from, window.closed_through) == (days[0], date(2026, 3, 14))
    assert closed == (window.closed_through - window.closed_from).days + 1
    assert await close_days(db, world.clock) == 0  # idempotent: nothing left

    async def summarised(session: Any) -> list[date]:
        return list(await session.scalars(text("SELECT service_date FROM report_hospital_days ORDER BY 1")))

    rows = await db.run(summarised)
    assert rows == days[:2]  # the open 20 March is counted live
    world.clock.set(local_datetime(date(2026, 3, 25), 0, 5))
    assert await close_days(db, world.clock) == 10
    span = {"from": "2026-02-01", "to": "2026-03-31", "granularity": "month"}
    await assert_same_report(client, db, world, span)


async def test_replicas_close_days_together_without_harm(client, world, db, clean_db):
    from service.kit.db import Database

    await push(client, world, [session_item("S1", date(2026, 1, 20)), session_item("S2", date(2026, 3, 1))],
               days_ahead=0)  # fmt: skip
    world.clock.set(local_datetime(date(2026, 3, 5), 1))
    others = [Database(clean_db, pool_size=2) for _ in range(2)]
    try:
        counts = await asyncio.gather(*(close_days(d, world.clock) for d in (db, *others)))
    finally:
        for other in others:
            await other.dispose()
    assert sum(counts) >= (date(2026, 3, 4) - date(2026, 1, 20)).days + 1
    while await close_days(db, world.clock):  # a replica that gave way leaves the rest to the next pass
        pass
    window = await db.run(lambda s: read_window(session=s))
    assert window is not None and (window.closed_from, window.closed_through) == (
        date(2026, 1, 20),
        date(2026, 3, 4),
    )
    assert await assert_summary_is_a_recount(db) == 2
    await assert_same_report(
        client, db, world, {"from": "2026-01-01", "to": "2026-03-31", "granularity": "month"}
    )


async def booked_day(client, world) -> tuple[date, str]:
    await sign(client, world, [1])
    day = date(2026, 3, 10)
    await push(client, world, [session_item("S1", day)])
    free = await pool_slots(client, world, service_date=day.isoformat())
    r = await client.post("/v1/referrals", json=booking(free[0]["slot_id"], 1, clock=world.clock),
                          headers=world.auth("chc_a"))  # fmt: skip
    assert r.status_code == 201, r.text
    return day, r.json()["reference"]


async def test_a_closing_waits_for_a_writer_of_its_day(client, world, db):
    """A writer that read the old window commits before the closing reads the day."""
    day, reference = await booked_day(client, world)
    world.clock.set(local_datetime(day + timedelta(days=1), 1))
    async with db.sessionmaker() as writer:
        await writer.execute(
            text(
                "UPDATE referrals SET attendance = 'attended', attendance_reported_at = now() WHERE reference = :r"
            ),
            {"r": reference},
        )  # the day is open: nothing is refreshed, the day's lock is held shared
        closing = asyncio.create_task(close_days(db, world.clock))
        await until_a_session_waits_on_a_lock(db)
        assert not closing.done()
        await writer.commit()
    assert await closing == 1
    params = {"from": day.isoformat(), "to": day.isoformat()}
    [row] = (await assert_same_report(client, db, world, params))["rows"]
    assert row["attended"] == 1  # the closing counted the write it waited for


async def test_a_writer_waits_for_the_closing_of_its_day(client, world, db):
    """A writer of a day being closed waits, then reads the new window and refreshes the day."""
    day, reference = await booked_day(client, world)
    world.clock.set(local_datetime(day + timedelta(days=1), 18))
    async with db.sessionmaker() as closing:
        assert await close_next_day(session=closing, today=day + timedelta(days=1)) == day
        report = asyncio.create_task(
            client.post(
                "/v1/hospital/attendance",
                json={"reports": [{"reference": reference, "outcome": "no_show"}]},
                headers=world.auth("city_hospital"),
            )
        )
        await until_a_session_waits_on_a_lock(db)
        assert not report.done()
        await closing.commit()
    assert (await report).status_code == 200
    params = {"from": day.isoformat(), "to": day.isoformat()}
    [row] = (await assert_same_report(client, db, world, params))["rows"]
    assert row["no_show"] == 1  # the writer refreshed the day it found closed


async def test_writes_outside_read_committed_are_refused(client, world, db):
    """The locks order a writer and a closing only for READ COMMITTED statements; others are refused."""
    await push(client, world, [session_item("S1", date(2026, 3, 10))])
    async with db.sessionmaker() as session:
        await session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        with pytest.raises(DBAPIError, match="READ COMMITTED"):
            await session.execute(text("UPDATE clinic_sessions SET doctor_title = 'chief'"))
        await session.rollback()


async def test_a_shortfall_without_a_session_counts_only_in_a_period_that_has_sessions(client, world, db):
    """As the live statement has it: a cell exists where a session does; its shortfalls come with it."""
    monday = date(2026, 3, 9)
    [pushed] = await push(client, world, [session_item("S1", monday)])
    assert pushed["result"] == "created"

    async def orphan(session: Any) -> None:
        await session.execute(
            text(
                "INSERT INTO reservation_shortfalls (department_id, service_date, resource_kind, kind,"
                " hospital_id, required, actual, policy_id, recorded_at)"
                " SELECT department_id, service_date + 2, resource_kind, 'lead_time', hospital_id, 1440, 0,"
                " policy_id, now() FROM clinic_sessions"
            )
        )

    await db.run(orphan)  # Wednesday: a shortfall, no session
    world.clock.set(local_datetime(monday + timedelta(days=1), 1))
    assert await close_days(db, world.clock) == 1  # Monday closed; Wednesday still open
    for wednesday_closed in (False, True):
        window = await db.run(lambda s: read_window(session=s))
        assert (
            window is not None and (window.closed_through >= monday + timedelta(days=2)) is wednesday_closed
        )
        for group in ("hospital", "department", "region"):
            week = {"from": "2026-03-09", "to": "2026-03-15", "granularity": "week", "group": group}
            [row] = (await assert_same_report(client, db, world, week))["rows"]
            assert row["shortfalls"]["lead_time"] == 1
            days = await assert_same_report(client, db, world, {**week, "granularity": "day"})
            assert [row["period"] for row in days["rows"]] == ["2026-03-09"]
        world.clock.set(local_datetime(monday + timedelta(days=5), 1))
        await close_days(db, world.clock)


@given(st.integers(min_value=0, max_value=2**40), st.integers(min_value=0, max_value=2**40))
def test_a_ratio_is_written_as_round_writes_it(part: int, whole: int) -> None:
    expected = "null" if whole == 0 else repr(round(part / whole, 4))
    assert ratio_json(part, whole, {}) == expected


def test_a_ratio_at_an_exact_tie_is_rounded_as_round_rounds_its_float() -> None:
    """Every small ratio, and exact ties at the fifth place (binary-exact ones round half to even)."""
    texts: dict[int, str] = {}
    pairs = [(p, w) for w in range(1, 300) for p in range(0, w + 2)]
    pairs += [(k * m, 20000 * m) for k in range(1, 20000, 2) for m in (1, 3, 64, 625)]
    pairs += [(k, 32) for k in range(1, 64, 2)]  # 1/32 = 0.03125: a tie the float holds exactly
    assert [ratio_json(p, w, texts) for p, w in pairs] == [repr(round(p / w, 4)) for p, w in pairs]
