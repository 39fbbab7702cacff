"""Compliance reports (R1–R4, R6, R20): figures checked against counts this script keeps itself.

The seeded story, in the city hospital under policy test-city (20 %, half senior):
version 1 governs 10 March, a version 2 published for 16 March governs the later days.
On 10 March CARD (a senior and an attending session) and NEUR (attending only: short of
seniors) are pooled; four referrals are booked, two cancelled (one before, one after the
public release), the release loop returns what is left, and attendance is reported.
On 16 March one CARD session is withdrawn (停诊) after a booking; on 1 April nothing is
booked. Two other hospitals push one session each, for the region and alliance rollups.

The expected figures are tallied here, as the script acts, from the push answers (which
slots the pool holds) and the script's own bookings; none comes from the report code.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from service.kit.clock import local_datetime
from service.slots.release import release_due_slots
from tests.factories import (
    TEST_POLICY,
    add_alliance,
    add_wuhu_key,
    booking,
    pool_slots,
    push,
    session_item,
    sign,
)

D1 = date(2026, 3, 10)  # Tuesday of ISO week 11
D2 = date(2026, 3, 16)  # Monday of ISO week 12, under policy version 2
D3 = date(2026, 4, 1)  # April

FIGURES = (
    "offered",
    "reserved",
    "senior_reserved",
    "pool_bookings",
    "returned",
    "cancelled",
    "attended",
    "no_show",
)


@dataclass
class Tally:
    """Expected figures per (hospital, department, day), kept by the script."""

    cells: dict[tuple[str, str, date], Counter[str]] = field(default_factory=dict)
    policies: dict[tuple[str, str, date], set[tuple[str, int]]] = field(default_factory=dict)
    short: dict[tuple[str, str, date], Counter[str]] = field(default_factory=dict)

    def add(self, hospital: str, dept: str, day: date, **counts: int) -> None:
        self.cells.setdefault((hospital, dept, day), Counter()).update(counts)

    def sum(self, keep: Any) -> Counter[str]:
        total: Counter[str] = Counter()
        for key, counts in self.cells.items():
            if keep(*key):
                total.update(counts)
        return total

    def versions(self, keep: Any) -> set[tuple[str, int]]:
        return {v for key, vs in self.policies.items() if keep(*key) for v in vs}

    def shortfalls(self, keep: Any) -> Counter[str]:
        total: Counter[str] = Counter()
        for key, counts in self.short.items():
            if keep(*key):
                total.update(counts)
        return total


def ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def expected_row(tally: Tally, keep: Any) -> dict[str, Any]:
    c = tally.sum(keep)
    kept = c["pool_bookings"] - c["cancelled"]
    short = tally.shortfalls(keep)
    return {
        **{name: c[name] for name in FIGURES},
        "reserved_ratio": ratio(c["reserved"], c["offered"]),
        "senior_share": ratio(c["senior_reserved"], c["reserved"]),
        "utilisation": ratio(kept, c["reserved"]),
        "up_referral_share": ratio(kept, c["offered"]),
        "shortfalls": {k: short[k] for k in ("ratio", "senior_share", "lead_time")},
        "shortfall": bool(+short),
        "policy_versions": sorted(tally.versions(keep)),
    }


def actual_row(row: dict[str, Any]) -> dict[str, Any]:
    keys = (*FIGURES, "reserved_ratio", "senior_share", "utilisation", "up_referral_share")
    return {
        **{k: row[k] for k in keys},
        "shortfalls": row["shortfalls"],
        "shortfall": row["shortfall"],
        "policy_versions": sorted((p["code"], p["version"]) for p in row["policies"]),
    }


async def get_report(client, world, who="commission", **params: Any):
    return await client.get("/v1/reports/compliance", params=params, headers=world.auth(who))


async def report_rows(client, world, **params: Any) -> list[dict[str, Any]]:
    r = await get_report(client, world, **params)
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["rows"]
    return rows


def held(result: dict[str, Any]) -> int:
    return len(result["pool_slot_numbers"])


@pytest.fixture
async def story(client, world, db) -> Tally:
    """Seed the story through the API and the release loop; return the expected figures."""
    tally = Tally()
    city = world.ids["city_hospital"]
    await sign(client, world, list(range(1, 9)))
    await add_alliance(db, "H-CITY", ["H-DIST", "P-A"])

    body = {k: str(v) if isinstance(v, Decimal | date) else v for k, v in TEST_POLICY.items()}
    body["effective_from"] = D2.isoformat()
    r = await client.post("/v1/policies", json=body, headers=world.auth("commission"))
    assert r.status_code == 201, r.text

    # --- pushes (two days before now, ahead of every pool window) -------------------------
    a = session_item("A", D1, title="associate_chief", doctor_code="D-A")
    b = session_item("B", D1, title="attending", doctor_code="D-B")
    n = session_item("N", D1, title="attending", doctor_code="D-N", department="NEUR", specialty="neurology")
    n["department"]["name"] = '=HYPERLINK("http://x")'  # a HIS name a spreadsheet would run
    c = session_item("C", D2, title="chief", doctor_code="D-C")
    d = session_item("D", D2, title="associate_chief", doctor_code="D-D")
    e = session_item("E", D3, title="chief", doctor_code="D-E")
    res = {r["external_id"]: r for r in await push(client, world, [a, b, n, c, d, e])}
    assert all(r["result"] == "created" for r in res.values()), res
    for key, dept, day, senior in (
        ("A", "CARD", D1, True), ("B", "CARD", D1, False), ("N", "NEUR", D1, False),
        ("C", "CARD", D2, True), ("D", "CARD", D2, True), ("E", "CARD", D3, True),
    ):  # fmt: skip
        tally.add(
            "city", dept, day, offered=10, reserved=held(res[key]), senior_reserved=held(res[key]) * senior
        )
        tally.policies.setdefault(("city", dept, day), set()).add(("test-city", 1 if day < D2 else 2))
    # NEUR has no senior doctor: the senior share (R4) is short on 10 March.
    assert [s["kind"] for s in res["N"]["shortfalls"]] == ["senior_share"]
    tally.short[("city", "NEUR", D1)] = Counter({"senior_share": 1})

    for who, name, code in (
        ("district_hospital", "district", "fuzhou"),
        ("provincial_hospital", "provincial", "anhui-provincial"),
    ):
        [out] = await push(client, world, [session_item(f"X-{name}", D1, doctor_code="D-X")], who=who)
        assert out["result"] == "created" and not out["shortfalls"], out
        tally.add(name, "CARD", D1, offered=10, reserved=held(out), senior_reserved=held(out))
        tally.policies[(name, "CARD", D1)] = {(code, 1)}

    # --- 10 March: bookings at 2 March 09:00, inside the pool window ------------------------
    async def book(hospital_id: int, day: date, doctor: str, seq: int) -> str:
        free = [
            s
            for s in await pool_slots(client, world, hospital_id=hospital_id, service_date=day.isoformat())
            if s["doctor"]["code"] == doctor
        ]
        r = await client.post("/v1/referrals", json=booking(free[0]["slot_id"], seq, clock=world.clock),
                              headers=world.auth("chc_a"))  # fmt: skip
        assert r.status_code == 201, r.text
        reference: str = r.json()["reference"]
        return reference

    async def cancel(reference: str) -> None:
        r = await client.post(f"/v1/referrals/{reference}/cancel", json={"reason": "病情好转"},
                              headers=world.auth("chc_a"))  # fmt: skip
        assert r.status_code == 200, r.text

    r1 = await book(city, D1, "D-A", 1)
    r2 = await book(city, D1, "D-A" if held(res["A"]) > 1 else "D-B", 2)
    r3 = await book(city, D1, "D-B", 3)
    r4 = await book(city, D1, "D-N", 4)
    tally.add("city", "CARD", D1, pool_bookings=3)
    tally.add("city", "NEUR", D1, pool_bookings=1)

    world.clock.set(local_datetime(D1 - timedelta(days=7), 7))  # before the public release
    await cancel(r3)  # the slot goes back to the pool, then the loop returns it
    tally.add("city", "CARD", D1, cancelled=1)
    world.clock.set(local_datetime(D1 - timedelta(days=7), 9))
    assert await release_due_slots(db, world.clock) > 0
    world.clock.set(local_datetime(D1 - timedelta(days=6), 9))
    await cancel(r2)  # after the release: the slot returns to the public at once
    tally.add("city", "CARD", D1, cancelled=1)

    # --- 16 March: one booking in each session, then session C is withdrawn ------------------
    world.clock.set(local_datetime(D2 - timedelta(days=8), 9))
    await book(city, D2, "D-C", 5)
    r6 = await book(city, D2, "D-D", 6)
    tally.add("city", "CARD", D2, pool_bookings=2, cancelled=1)
    withdrawn = {**c, "version": 2, "status": "withdrawn", "withdrawn_reason": "专家外出", "slots": []}
    [out] = await push(client, world, [withdrawn], days_ahead=0)
    assert out["result"] == "withdrawn", out
    tally.add("city", "CARD", D2, offered=-10, reserved=-held(res["C"]), senior_reserved=-held(res["C"]))

    # --- attendance, then every pool window has closed -------------------------------------
    world.clock.set(local_datetime(D2, 18))
    reports = [{"reference": r1, "outcome": "attended"}, {"reference": r4, "outcome": "no_show"},
               {"reference": r6, "outcome": "attended"}]  # fmt: skip
    r = await client.post(
        "/v1/hospital/attendance", json={"reports": reports}, headers=world.auth("city_hospital")
    )
    assert r.status_code == 200, r.text
    tally.add("city", "CARD", D1, attended=1)
    tally.add("city", "NEUR", D1, no_show=1)
    tally.add("city", "CARD", D2, attended=1)
    world.clock.set(local_datetime(D3, 18))
    await release_due_slots(db, world.clock)
    # Every window is past: each held slot without a standing booking is back with the public.
    for counts in tally.cells.values():
        counts["returned"] = counts["reserved"] - (counts["pool_bookings"] - counts["cancelled"])
    return tally


def by_period(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["period"]: actual_row(row) for row in rows}


def city(h: str, *_: Any) -> bool:
    return h == "city"


async def test_r20_per_hospital_day_week_and_month(client, world, story):
    rows = await report_rows(client, world, **{"from": "2026-03-09", "to": "2026-04-05"},
                             granularity="day", hospital_id=world.ids["city_hospital"])  # fmt: skip
    assert {r["hospital"]["name"] for r in rows} == {"合肥市第一人民医院"}
    assert by_period(rows) == {
        day.isoformat(): expected_row(story, lambda h, _d, dd, day=day: h == "city" and dd == day)
        for day in (D1, D2, D3)
    }
    day1 = by_period(rows)[D1.isoformat()]
    # The figures the story was built to show, spelled out once.
    assert (day1["offered"], day1["pool_bookings"], day1["cancelled"], day1["attended"], day1["no_show"]) == (
        30,
        4,
        2,
        1,
        1,
    )
    assert day1["shortfall"] and day1["shortfalls"]["senior_share"] == 1

    weeks = await report_rows(client, world, **{"from": "2026-03-09", "to": "2026-04-05"},
                              granularity="week", hospital_id=world.ids["city_hospital"])  # fmt: skip
    assert by_period(weeks) == {
        "2026-W11": expected_row(story, lambda h, _d, day: h == "city" and day == D1),
        "2026-W12": expected_row(story, lambda h, _d, day: h == "city" and day == D2),
        "2026-W14": expected_row(story, lambda h, _d, day: h == "city" and day == D3),
    }
    assert [(w["period_start"], w["period_end"]) for w in weeks][-1] == ("2026-03-30", "2026-04-05")

    months = await report_rows(client, world, **{"from": "2026-03-01", "to": "2026-04-30"},
                               granularity="month", hospital_id=world.ids["city_hospital"])  # fmt: skip
    march = by_period(months)["2026-03"]
    assert march == expected_row(story, lambda h, _d, day: h == "city" and day.month == 3)
    assert march["policy_versions"] == [
        ("test-city", 1),
        ("test-city", 2),
    ]  # the month spans both versions of test-city
    assert by_period(months)["2026-04"] == expected_row(
        story, lambda h, _d, day: h == "city" and day.month == 4
    )


async def test_r20_per_department_of_one_hospital(client, world, story):
    rows = await report_rows(client, world, **{"from": "2026-03-01", "to": "2026-03-31"},
                             granularity="month", group="department", hospital_id=world.ids["city_hospital"])  # fmt: skip
    got = {row["department"]["code"]: actual_row(row) for row in rows}
    assert got == {
        dept: expected_row(story, lambda h, d, day, dept=dept: h == "city" and d == dept and day.month == 3)
        for dept in ("CARD", "NEUR")
    }
    assert {row["hospital"]["id"] for row in rows} == {world.ids["city_hospital"]}


async def test_r20_every_hospital_of_the_region(client, world, story):
    rows = await report_rows(client, world, **{"from": "2026-03-10", "to": "2026-03-10"})
    got = {row["hospital"]["id"]: actual_row(row) for row in rows}
    assert got == {
        world.ids[key + "_hospital"]: expected_row(story, lambda h, _d, day, key=key: h == key and day == D1)
        for key in ("city", "district", "provincial")
    }


async def test_r20_region_rollups_by_city_and_by_county(client, world, story):
    march = {"from": "2026-03-01", "to": "2026-03-31", "granularity": "month", "group": "region"}
    [hefei] = await report_rows(client, world, **march)  # the default level: city
    assert (hefei["region"], hefei["period"]) == ({"code": "340100", "name": "合肥市"}, "2026-03")
    assert actual_row(hefei) == expected_row(story, lambda _h, _d, day: day.month == 3)

    counties = await report_rows(client, world, **march, region_level="county")
    got = {row["region"]["code"]: actual_row(row) for row in counties}
    assert got == {
        "340104": expected_row(story, lambda h, _d, day: h in ("city", "provincial") and day.month == 3),
        "340102": expected_row(story, lambda h, _d, day: h == "district" and day.month == 3),
    }
    only = await report_rows(client, world, **march, region_level="county", region="340102")
    assert [row["region"]["code"] for row in only] == ["340102"]


async def test_r20_alliance_rollup_counts_lead_and_member_hospitals(client, world, story):
    rows = await report_rows(client, world, **{"from": "2026-03-09", "to": "2026-03-22"},
                             granularity="week", group="alliance")  # fmt: skip
    assert {row["alliance"]["name"] for row in rows} == {"test alliance"}
    assert by_period(rows) == {
        "2026-W11": expected_row(story, lambda h, _d, day: h in ("city", "district") and day == D1),
        "2026-W12": expected_row(story, lambda h, _d, day: h in ("city", "district") and day == D2),
    }


async def test_r20_csv_for_excel_carries_the_json_figures(client, world, story):
    params = {"from": "2026-03-01", "to": "2026-04-30", "granularity": "month", "group": "department",
              "hospital_id": world.ids["city_hospital"]}  # fmt: skip
    as_json = await report_rows(client, world, **params)
    r = await get_report(client, world, **params, format="csv")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert "attachment" in r.headers["content-disposition"]
    raw = r.content
    assert raw.startswith(b"\xef\xbb\xbf")
    text = raw.decode("utf-8-sig")
    assert text.count("\r\n") == len(as_json) + 1 and "\n" not in text.replace("\r\n", "")
    table = list(csv.reader(io.StringIO(text, newline="")))
    header, body = table[0], table[1:]
    for name in ("医院", "科室", "日期", "出诊号源数", "预留号源数", "预留比例", "高级职称占比", "基层预约数",
                 "退回公众数", "取消数", "就诊数", "爽约数", "预留号源使用率", "上转占比", "未达标", "政策版本"):  # fmt: skip
        assert name in header
    assert len(body) == len(as_json)
    col = {name: header.index(name) for name in header}
    pairs = {"出诊号源数": "offered", "预留号源数": "reserved", "基层预约数": "pool_bookings",
             "退回公众数": "returned", "取消数": "cancelled", "就诊数": "attended", "爽约数": "no_show"}  # fmt: skip
    ratios = {"预留比例": "reserved_ratio", "高级职称占比": "senior_share", "预留号源使用率": "utilisation",
              "上转占比": "up_referral_share"}  # fmt: skip
    for cells, row in zip(body, as_json, strict=True):
        assert cells[col["日期"]] == row["period"]
        for name, key in pairs.items():
            assert int(cells[col[name]]) == row[key]
        for name, key in ratios.items():
            assert (float(cells[col[name]]) if cells[col[name]] else None) == row[key]
        assert cells[col["未达标"]] == ("是" if row["shortfall"] else "否")
        assert cells[col["政策版本"]] == "; ".join(f"{p['code']} v{p['version']}" for p in row["policies"])
    neur = next(cells for cells in body if cells[col["科室编码"]] == "NEUR")
    assert neur[col["科室"]] == '\'=HYPERLINK("http://x")'  # defused, and quoted by the csv module
    assert neur[col["未达标明细"]] == "高级职称占比不足 1天"

    by_accept = await client.get("/v1/reports/compliance", params=params,
                                 headers={**world.auth("commission"), "Accept": "text/csv"})  # fmt: skip
    assert by_accept.content == raw


async def test_r20_other_resource_kinds_are_reported_apart(client, world, story):
    rows = await report_rows(
        client, world, **{"from": "2026-03-01", "to": "2026-03-31"}, resource_kind="examination"
    )
    assert rows == []


async def test_r20_report_ranges_are_bounded(client, world):
    longest = await get_report(client, world, **{"from": "2026-01-01", "to": "2026-04-02"}, granularity="day")
    assert longest.status_code == 200, longest.text  # 92 days
    r = await get_report(client, world, **{"from": "2026-01-01", "to": "2026-04-03"}, granularity="day")
    assert (r.status_code, r.json()["code"]) == (422, "report_range_too_long")
    ok = await get_report(client, world, **{"from": "2026-01-01", "to": "2026-04-03"}, granularity="week")
    assert ok.status_code == 200
    r = await get_report(client, world, **{"from": "2026-03-02", "to": "2026-03-01"})
    assert (r.status_code, r.json()["code"]) == (422, "report_range_reversed")


async def test_r20_report_is_for_the_commission_of_the_region(client, world, db, crypto, clock):
    r = await get_report(client, world, who="city_hospital", **{"from": "2026-03-01", "to": "2026-03-01"})
    assert (r.status_code, r.json()["code"]) == (403, "wrong_role")
    r = await get_report(client, world, **{"from": "2026-03-01", "to": "2026-03-01"}, region="320000")
    assert (r.status_code, r.json()["code"]) == (403, "region_outside")

    await add_wuhu_key(world, crypto, "wuhu", "commission")
    params = {"from": "2026-03-10", "to": "2026-03-10"}
    r = await get_report(client, world, who="wuhu", **params, hospital_id=world.ids["city_hospital"])
    assert (r.status_code, r.json()["code"]) == (403, "hospital_outside_region")
    [out] = await push(client, world, [session_item("W", D1)])
    assert out["result"] == "created"
    assert await report_rows(client, world, who="wuhu", **params) == []
    assert len(await report_rows(client, world, **params)) == 1


async def test_r20_figures_follow_every_change_after_a_first_read(client, world, db):
    """Slot figures come from counts the database keeps; each change shows in the next report."""
    await sign(client, world, [1, 2])
    [res] = await push(client, world, [session_item("F", D1, title="chief", doctor_code="D-F")])
    assert res["result"] == "created", res
    tally = Tally()
    tally.add("city", "CARD", D1, offered=10, reserved=held(res), senior_reserved=held(res))
    tally.policies[("city", "CARD", D1)] = {("test-city", 1)}
    params = {"from": D1.isoformat(), "to": D1.isoformat(), "hospital_id": world.ids["city_hospital"]}

    async def check() -> None:
        [row] = await report_rows(client, world, **params)
        assert actual_row(row) == expected_row(tally, city)

    await check()  # read once before anything changes
    references = []
    for seq in (1, 2):
        [free, *_] = await pool_slots(client, world, hospital_id=world.ids["city_hospital"],
                                      service_date=D1.isoformat())  # fmt: skip
        r = await client.post("/v1/referrals", json=booking(free["slot_id"], seq, clock=world.clock),
                              headers=world.auth("chc_a"))  # fmt: skip
        assert r.status_code == 201, r.text
        references.append(r.json()["reference"])
        tally.add("city", "CARD", D1, pool_bookings=1)
        await check()

    world.clock.set(local_datetime(D1 - timedelta(days=7), 7))
    r = await client.post(f"/v1/referrals/{references[1]}/cancel", json={"reason": "病情好转"},
                          headers=world.auth("chc_a"))  # fmt: skip
    assert r.status_code == 200, r.text
    tally.add("city", "CARD", D1, cancelled=1)
    await check()

    world.clock.set(local_datetime(D1 - timedelta(days=7), 9))
    assert await release_due_slots(db, world.clock) > 0
    tally.add("city", "CARD", D1, returned=held(res) - 1)  # all held slots but the standing booking's
    await check()

    world.clock.set(local_datetime(D1, 18))
    r = await client.post("/v1/hospital/attendance", json={"reports": [{"reference": references[0],
                          "outcome": "attended"}]}, headers=world.auth("city_hospital"))  # fmt: skip
    assert r.status_code == 200, r.text
    tally.add("city", "CARD", D1, attended=1)
    await check()


async def test_r20_referral_counts_equal_a_recount_of_referrals(client, world, db, story):
    """The trigger-kept counts match the referrals after bookings, cancellations, attendance and a correction."""
    recount_sql = """
        SELECT session_id, hospital_id, service_date, count(*) AS bookings,
               count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
               count(*) FILTER (WHERE attendance = 'attended') AS attended,
               count(*) FILTER (WHERE attendance = 'no_show') AS no_show
        FROM referrals GROUP BY session_id, hospital_id, service_date
    """
    kept_sql = """
        SELECT session_id, hospital_id, service_date, bookings, cancelled, attended, no_show
        FROM referral_counts WHERE bookings <> 0
    """

    async def rows(sql: str) -> set[tuple[Any, ...]]:
        async def read(session: Any) -> set[tuple[Any, ...]]:
            return {tuple(row) for row in await session.execute(text(sql))}

        return await db.run(read)

    async def compare() -> set[tuple[Any, ...]]:
        recount = await rows(recount_sql)
        assert recount and await rows(kept_sql) == recount
        return recount

    before = await compare()
    assert sum(row[4] for row in before) == 3 and sum(row[6] for row in before) == 1  # cancelled, no-show

    async def no_show_reference(session: Any) -> str:
        reference: str = await session.scalar(
            text("SELECT reference FROM referrals WHERE attendance = 'no_show'")
        )
        return reference

    reference = await db.run(no_show_reference)
    r = await client.post("/v1/hospital/attendance", json={"reports": [{"reference": reference,
                          "outcome": "attended"}]}, headers=world.auth("city_hospital"))  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["result"] == "corrected", r.text
    after = await compare()
    assert sum(row[6] for row in after) == 0 and sum(row[5] for row in after) == 3
