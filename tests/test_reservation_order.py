"""R4 over the whole department-day: the order of a push does not decide the reservation (R1, R4, R5, R6).

Until the pool window opens nothing can be booked, so every push that touches a department-day
re-selects over all its sessions; after it opens, the reservation only grows, from slots new to
the pool. These tests push through the HTTP API and read the outcome back through
``GET /v1/hospital/sessions`` and ``GET /v1/hospital/shortfalls``.
"""

from __future__ import annotations

import itertools
from datetime import date, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from service.kit.clock import local_datetime
from service.models.events import Event
from service.models.registry import SENIOR_TITLES
from service.slots.release import release_due_slots
from tests.factories import booking, pool_slots, push, push_answer, session_item, sign

DAY = date(2026, 3, 10)  # public 3 March 08:00, pool opens 2 March 08:00; tests start at 2 March 09:00
RELEASE = local_datetime(DAY - timedelta(days=7), 8)


async def day_sessions(client, world, department: str, day: date = DAY) -> list[dict[str, Any]]:
    """The hospital's sessions of ``department`` on ``day``, every page."""
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"service_date": day.isoformat(), "department_code": department, "limit": 2}
    while True:
        r = await client.get("/v1/hospital/sessions", params=params, headers=world.auth("city_hospital"))
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        if body["next_cursor"] is None:
            return items
        params["cursor"] = body["next_cursor"]


async def outcome(client, world, department: str, prefix: str) -> dict[str, Any]:
    """Reserved count, senior count, which slots (by the HIS's session ID and number), shortfalls."""
    sessions = await day_sessions(client, world, department)
    held = sorted(
        (s["external_id"].removeprefix(prefix), slot["number"], s["doctor_title"] in SENIOR_TITLES)
        for s in sessions
        for slot in s["slots"]
        if slot["in_pool"]
    )
    r = await client.get("/v1/hospital/shortfalls", headers=world.auth("city_hospital"))
    shortfalls = sorted(
        (s["kind"], s["required"], s["actual"])
        for s in r.json()["items"]
        if s["department_code"] == department
    )
    return {
        "reserved": len(held),
        "senior": sum(senior for *_, senior in held),
        "slots": held,
        "shortfalls": shortfalls,
    }


def the_tertiary_day(prefix: str, department: str) -> list[dict[str, Any]]:
    """The issue's day in clock order: a 10-slot associate-chief morning, two 15-slot attendings."""
    return [
        session_item(f"{prefix}AC", DAY, title="associate_chief", doctor_code="AC", slots=10,
                     department=department, minutes=15),
        session_item(f"{prefix}AT1", DAY, title="attending", doctor_code="AT1", slots=15,
                     department=department, minutes=10, first_hour=9),
        session_item(f"{prefix}AT2", DAY, title="attending", doctor_code="AT2", slots=15,
                     department=department, period="afternoon", minutes=10),
    ]  # fmt: skip


async def test_r4_a_senior_session_pushed_first_still_gets_the_senior_share(client, world):
    for item in the_tertiary_day("F", "FIRST"):  # the associate chief first, one push each
        await push(client, world, [item])
    senior_first = await outcome(client, world, "FIRST", "F")
    assert senior_first["reserved"] == 8  # ceil(20 % of 40)
    assert senior_first["senior"] >= 4  # at least half senior (R4)
    assert senior_first["shortfalls"] == []

    for item in reversed(the_tertiary_day("L", "LAST")):  # the associate chief last
        await push(client, world, [item])
    assert await outcome(client, world, "LAST", "L") == senior_first

    await push(client, world, the_tertiary_day("T", "TOGETHER"))  # in clock order, one push
    assert await outcome(client, world, "TOGETHER", "T") == senior_first


# --- the property: any day, any order, any split, before the window opens ------------------------

sessions_of_a_day = st.lists(
    st.tuples(
        st.sampled_from(["chief", "associate_chief", "attending", "resident"]),
        st.integers(1, 12),  # slots
        st.sampled_from([5, 10, 15, 30]),  # minutes each
        st.integers(7, 10),  # first hour (morning; afternoon adds 6)
        st.booleans(),  # afternoon
    ),
    min_size=1,
    max_size=6,
)
EXAMPLES = itertools.count()


def build(prefix: str, department: str, rows: list[tuple[str, int, int, int, bool]]) -> list[dict[str, Any]]:
    return [
        session_item(f"{prefix}{n}", DAY, title=title, doctor_code=f"D{n}", slots=slots, minutes=minutes,
                     first_hour=hour, period="afternoon" if afternoon else "morning", department=department)
        for n, (title, slots, minutes, hour, afternoon) in enumerate(rows)
    ]  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=sessions_of_a_day, data=st.data())
async def test_r4_the_reservation_does_not_depend_on_order_or_split(client, world, rows, data):
    # Each example on departments of its own: examples share the test's world.
    k = next(EXAMPLES)
    one, other = f"O{k}", f"P{k}"
    order = data.draw(st.permutations(range(len(rows))), label="order")
    cuts = data.draw(st.lists(st.booleans(), min_size=len(rows) - 1, max_size=len(rows) - 1), label="cuts")

    await push(client, world, build(f"{one}-", one, rows))  # all at once, in clock order

    items = build(f"{other}-", other, rows)
    pushes: list[list[dict[str, Any]]] = [[]]
    for position, n in enumerate(order):
        pushes[-1].append(items[n])
        if position < len(cuts) and cuts[position]:
            pushes.append([])
    for batch in pushes:
        await push(client, world, batch)

    whole, split = (
        await outcome(client, world, one, f"{one}-"),
        await outcome(client, world, other, f"{other}-"),
    )
    assert (whole["reserved"], whole["senior"], whole["shortfalls"]) == (
        split["reserved"],
        split["senior"],
        split["shortfalls"],
    )
    assert whole["slots"] == split["slots"]  # the very same slots, too
    # And it is the reservation the policy asks for: 20 %, half of it senior where there are seniors.
    total = sum(slots for _, slots, *_ in rows)
    seniors = sum(slots for title, slots, *_ in rows if title in SENIOR_TITLES)
    target = -(-total // 5)
    assert whole["reserved"] == target
    assert whole["senior"] >= min(seniors, -(-target // 2))


# --- after the window opens ---------------------------------------------------------------------


async def test_r5_after_the_window_opens_the_reservation_only_grows_from_new_slots(client, world, clock):
    # Before the window: 15 attending slots, 3 reserved, none senior.
    [attending] = await push(
        client, world, [session_item("AT", DAY, title="attending", doctor_code="AT", slots=15)]
    )
    assert len(attending["pool_slot_numbers"]) == 3
    held_before = attending["pool_slot_ids"]

    # The window is open (the test clock): a chief's session arrives. Day of 25: target 5, senior 3.
    assert clock.now() >= RELEASE - timedelta(days=1)
    body = await push_answer(
        client, world, [session_item("CH", DAY, title="chief", doctor_code="CH", slots=10)], days_ahead=0
    )
    [chief] = body["results"]
    assert body["reservation_changes"] == []  # no slot of the open day left the pool
    assert len(chief["pool_slot_numbers"]) == 3  # the senior share, from the new slots only
    [at, _] = await day_sessions(client, world, "CARD")
    assert at["pool_slot_numbers"] == attending["pool_slot_numbers"]
    assert [s["slot_id"] for s in at["slots"] if s["in_pool"]] == held_before
    # The day meets R1 and R4; the late push itself is a lead-time shortfall (R5).
    assert {s["kind"] for s in chief["shortfalls"]} == {"lead_time"}

    # A re-push of the attending session changes nothing of the pool: its held slots stay, and
    # its stored free slots are not taken either, even though the day could hold fewer of them.
    [again] = await push(
        client, world, [session_item("AT", DAY, title="attending", doctor_code="AT", slots=15, version=2)],
        days_ahead=0,
    )  # fmt: skip
    assert again["pool_slot_ids"] == held_before

    # A family doctor books one; nothing a push does moves it or any other held slot.
    await sign(client, world, [1])
    slot_id = held_before[0]
    assert slot_id in {s["slot_id"] for s in await pool_slots(client, world)}
    r = await client.post("/v1/referrals", json=booking(slot_id, 1, clock=clock), headers=world.auth("chc_a"))
    assert r.status_code == 201, r.text
    await push(
        client, world, [session_item("CH2", DAY, title="chief", doctor_code="CH2", slots=20)], days_ahead=0
    )
    [at, *_] = await day_sessions(client, world, "CARD")
    assert [s["slot_id"] for s in at["slots"] if s["in_pool"]] == held_before


async def test_r4_the_same_pushes_before_the_window_move_slots_out_and_say_so(client, world, db):
    [attending] = await push(
        client, world, [session_item("AT", DAY, title="attending", doctor_code="AT", slots=15)]
    )
    body = await push_answer(
        client, world, [session_item("CH", DAY, title="chief", doctor_code="CH", slots=10)]
    )
    [chief] = body["results"]
    [change] = body["reservation_changes"]
    assert change["external_id"] == "AT" and change["session_id"] == attending["session_id"]
    assert change["service_date"] == DAY.isoformat() and change["department_code"] == "CARD"
    assert len(chief["pool_slot_numbers"]) + len(change["pool_slot_numbers"]) == 5
    assert len(chief["pool_slot_numbers"]) >= 3
    moved_out = set(attending["pool_slot_numbers"]) - set(change["pool_slot_numbers"])
    assert change["removed_slot_numbers"] == sorted(moved_out) != []
    # The answer's IDs are the pool's: they are what GET /v1/hospital/sessions shows.
    sessions = {s["external_id"]: s for s in await day_sessions(client, world, "CARD")}
    ids = {s["number"]: s["slot_id"] for s in sessions["AT"]["slots"]}
    assert change["pool_slot_ids"] == [ids[n] for n in change["pool_slot_numbers"]]
    ch_ids = {s["number"]: s["slot_id"] for s in sessions["CH"]["slots"]}
    assert chief["pool_slot_ids"] == [ch_ids[n] for n in chief["pool_slot_numbers"]]
    # Moving slots before the window writes no event: nothing was booked, nothing released.
    assert await db.run(lambda s: s.scalar(select(func.count()).select_from(Event))) == 0


async def test_r6_slots_returned_at_the_release_are_the_final_reservation(client, world, clock, db):
    """What the hospital receives: slots.returned lists the reservation as it finally stood."""
    await push(client, world, [session_item("AT", DAY, title="attending", doctor_code="AT", slots=15)])
    body = await push_answer(
        client, world, [session_item("CH", DAY, title="chief", doctor_code="CH", slots=10)]
    )
    [change] = body["reservation_changes"]
    final = {"AT": change["pool_slot_numbers"], "CH": body["results"][0]["pool_slot_numbers"]}
    clock.set(RELEASE + timedelta(minutes=1))
    await release_due_slots(db, clock)
    events = await db.run(lambda s: s.scalars(select(Event).where(Event.type == "slots.returned")))
    returned = {e.payload["data"]["session"]["external_id"]: [s["number"] for s in e.payload["data"]["slots"]]
                for e in events}  # fmt: skip
    assert returned == final
    assert not set(returned["AT"]) & set(change["removed_slot_numbers"])


# --- the list itself ----------------------------------------------------------------------------


async def test_a_hospital_lists_only_its_own_sessions_of_the_day(client, world):
    await push(client, world, [session_item("S1", DAY, slots=4), session_item("S2", DAY + timedelta(days=1))])
    await push(client, world, [session_item("X1", DAY, slots=4)], who="district_hospital")
    r = await client.get(
        "/v1/hospital/sessions", params={"service_date": DAY.isoformat()}, headers=world.auth("city_hospital")
    )
    assert r.status_code == 200, r.text
    [s1] = r.json()["items"]
    assert s1["external_id"] == "S1"
    assert [s["number"] for s in s1["slots"]] == [1, 2, 3, 4]
    assert s1["pool_slot_numbers"] == [s["number"] for s in s1["slots"] if s["status"] == "reserved"] != []
    assert s1["pool_opens_at"] is not None and s1["public_at"] is not None
    r = await client.get(
        "/v1/hospital/sessions",
        params={"service_date": DAY.isoformat()},
        headers=world.auth("district_hospital"),
    )
    assert [s["external_id"] for s in r.json()["items"]] == ["X1"]


async def test_the_session_list_is_bounded_and_refuses_bad_input(client, world):
    auth = world.auth("city_hospital")
    for params, code in (
        ({}, "invalid_request"),
        ({"service_date": DAY.isoformat(), "limit": 51}, "invalid_request"),
        ({"service_date": DAY.isoformat(), "cursor": "bm90LWEtY3Vyc29y"}, "invalid_cursor"),
        ({"service_date": "9999-01-01"}, "date_out_of_range"),
    ):
        r = await client.get("/v1/hospital/sessions", params=params, headers=auth)
        assert r.status_code == 422, (params, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == code, r.text


async def test_r4_a_withdrawal_re_selects_the_rest_of_its_day(client, world):
    await push(
        client,
        world,
        [
            session_item("CH", DAY, title="chief", doctor_code="CH", slots=10),
            session_item("AT", DAY, title="attending", doctor_code="AT", slots=10, period="afternoon"),
        ],
    )
    before = {s["external_id"]: s["pool_slot_numbers"] for s in await day_sessions(client, world, "CARD")}
    withdrawn = session_item("CH", DAY, title="chief", doctor_code="CH", slots=10, version=2)
    withdrawn |= {"status": "withdrawn", "withdrawn_reason": "医生外出会诊"}
    body = await push_answer(client, world, [withdrawn])
    assert [r["result"] for r in body["results"]] == ["withdrawn"]
    # The day is now 10 attending slots: 2 reserved, and no senior slot left to meet R4.
    [change] = body["reservation_changes"]
    assert change["external_id"] == "AT"
    assert len(change["pool_slot_numbers"]) == 2
    assert change["added_slot_numbers"] == sorted(set(change["pool_slot_numbers"]) - set(before["AT"]))
    kinds = {s["kind"]: (s["required"], s["actual"]) for s in body["results"][0]["shortfalls"]}
    assert kinds == {"senior_share": (1, 0)}
