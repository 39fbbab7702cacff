"""Every date and instant the API accepts is bounded: a bad one is a 422 naming its field, never a 500."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text

from service.kit.clock import SHANGHAI
from service.kit.cursors import encode_cursor
from service.models.slots import ClinicSession
from tests.factories import World, booking, contract_row, pool_slots, push, session_item, sign

DAY = date(2026, 3, 10)


async def post_sessions(
    client: httpx.AsyncClient, world: World, items: list[dict[str, Any]]
) -> httpx.Response:
    return await client.post(
        "/v1/hospital/sessions", json={"sessions": items}, headers=world.auth("city_hospital")
    )


def far_item(external_id: str, day: date) -> dict[str, Any]:
    """A well-formed push item on ``day``: its slots start that day, after a release a week before."""
    item = session_item(external_id, DAY, slots=2)
    start = datetime(day.year, day.month, day.day, 8, tzinfo=UTC)
    item["service_date"] = day.isoformat()
    item["public_at"] = (start - timedelta(days=7) if day.year > 1 else start).isoformat()
    for i, slot in enumerate(item["slots"]):
        slot["starts_at"] = (start + timedelta(minutes=15 * i)).isoformat()
        slot["ends_at"] = (start + timedelta(minutes=15 * (i + 1))).isoformat()
    return item


async def count_sessions(db: Any) -> int:
    return int(await db.run(lambda s: s.scalar(select(func.count()).select_from(ClinicSession))))


# --- the absolute window, while parsing ---------------------------------------------------------


async def test_push_of_year_9999_is_refused_and_nothing_is_stored(client, world, db):
    r = await post_sessions(client, world, [far_item("BAD", date(9999, 12, 31))])
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "date_out_of_range"
    assert body["field"] == "sessions.0.service_date"
    assert await count_sessions(db) == 0


async def test_push_near_year_1_is_refused_not_a_500(client, world, db):
    r = await post_sessions(client, world, [far_item("BAD", date(1, 1, 1))])
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "date_out_of_range"
    assert await count_sessions(db) == 0


async def test_report_range_outside_the_window_is_refused_naming_the_parameter(client, world):
    r = await client.get(
        "/v1/reports/compliance",
        params={"from": "0001-01-01", "to": "0001-01-02"},
        headers=world.auth("commission"),
    )
    assert r.status_code == 422, r.text
    assert (r.json()["code"], r.json()["field"]) == ("date_out_of_range", "from")


async def test_audit_instants_at_the_ends_of_time_are_refused(client, world):
    for value in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        r = await client.get("/v1/audit", params={"to": value}, headers=world.auth("commission"))
        assert r.status_code == 422, r.text
        assert (r.json()["code"], r.json()["field"]) == ("date_out_of_range", "to")


async def test_audit_search_instants_at_the_ends_of_time_are_refused(client, world):
    for value in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        r = await client.post("/v1/audit/search", json={"from": value}, headers=world.auth("commission"))
        assert r.status_code == 422, r.text
        assert (r.json()["code"], r.json()["field"]) == ("date_out_of_range", "from")


async def test_audit_still_names_a_missing_offset_with_its_own_code(client, world):
    r = await client.get(
        "/v1/audit", params={"from": "2026-03-01T00:00:00"}, headers=world.auth("commission")
    )
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "naive_datetime"


async def test_fhir_date_search_outside_the_window_is_a_422_outcome(client, world):
    for param in ("ge9999-12-31", "lt0001-01-01", "ge2101", "ge2200-01-01T00:00:00Z"):
        r = await client.get("/fhir/Schedule", params={"date": param}, headers=world.auth("commission"))
        assert r.status_code == 422, (param, r.text)
        outcome = r.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert "date_out_of_range" in str(outcome)


async def test_policy_effective_date_far_off_is_refused(client, world):
    from tests.test_policies import policy_body

    r = await client.post(
        "/v1/policies", json=policy_body(effective_from="9999-12-31"), headers=world.auth("commission")
    )
    assert r.status_code == 422, r.text
    assert (r.json()["code"], r.json()["field"]) == ("date_out_of_range", "effective_from")


async def test_contract_dates_far_off_are_refused(client, world):
    row = contract_row(1, ends_on=date(9999, 12, 31))
    r = await client.post("/v1/contracts/sync", json={"contracts": [row]}, headers=world.auth("platform"))
    assert r.status_code == 422, r.text
    assert (r.json()["code"], r.json()["field"]) == ("date_out_of_range", "contracts.0.ends_on")


# --- the window about the present, checked by the rule ------------------------------------------


async def test_r_service_date_beyond_two_years_is_rejected_per_item(client, world):
    today = world.clock.now().astimezone(SHANGHAI).date()
    too_far = session_item("FAR", today + timedelta(days=800), slots=2)
    just_in = session_item("NEAR", today + timedelta(days=700), slots=2)
    r = await post_sessions(client, world, [too_far, just_in])
    assert r.status_code == 200, r.text
    far, near = r.json()["results"]
    assert far["result"] == "rejected"
    assert [e["code"] for e in far["errors"]] == ["date_out_of_range"]
    assert "service_date" in far["errors"][0]["detail"]
    assert near["result"] == "created"


async def test_r_service_date_more_than_a_year_back_is_rejected(client, world):
    today = world.clock.now().astimezone(SHANGHAI).date()
    old = session_item("OLD", today - timedelta(days=400), slots=2)
    [result] = (await post_sessions(client, world, [old])).json()["results"]
    assert result["result"] == "rejected"
    assert [e["code"] for e in result["errors"]] == ["date_out_of_range"]


# --- rows stored before the bounds existed -------------------------------------------------------


async def insert_infinity_session(db: Any) -> int:
    """A session at service date ``infinity`` (what 9999-12-31 became), with a pool-held slot, by SQL."""

    async def work(session: Any) -> int:
        session_id = await session.scalar(
            text(
                "INSERT INTO clinic_sessions (hospital_id, external_id, version, department_id, resource_kind,"
                " doctor_id, doctor_title, service_date, period, status, policy_id, updated_at)"
                " SELECT hospital_id, 'INFINITY', 1, department_id, resource_kind, doctor_id, doctor_title,"
                " 'infinity', period, 'active', policy_id, updated_at"
                " FROM clinic_sessions WHERE external_id = 'S1' RETURNING id"
            )
        )
        await session.execute(
            text(
                "INSERT INTO slots (session_id, resource_kind, hospital_id, number, starts_at, ends_at,"
                " pool_opens_at, public_at, status)"
                " SELECT :sid, 'outpatient', hospital_id, n, '9999-12-31 08:00+08'::timestamptz + n * interval"
                " '15 minutes', '9999-12-31 08:15+08'::timestamptz + n * interval '15 minutes',"
                " '2026-03-01 08:00+08', '9999-12-30 08:00+08', 'reserved'"
                " FROM clinic_sessions, generate_series(1, 2) n WHERE id = :sid"
            ),
            {"sid": session_id},
        )
        return int(session_id)

    return await db.run(work)


async def test_an_infinity_row_breaks_no_read(client, world, db):
    await push(client, world, [session_item("S1", DAY, slots=10)])
    bad = await insert_infinity_session(db)
    reads = [
        ("commission", "/fhir/Schedule", {}),
        ("commission", "/fhir/Schedule", {"date": "ge2026-01-01"}),
        ("commission", f"/fhir/Schedule/{bad}", {}),
        ("commission", "/fhir/Slot", {}),
        ("commission", "/fhir/Slot", {"start": "ge2026-01-01"}),
        ("city_hospital", "/fhir/Schedule", {}),
        ("chc_a", "/fhir/Slot", {}),
        ("platform", "/fhir/$bulk-publish", {}),
        ("platform", "/fhir/bulk/Schedule.ndjson", {}),
        ("platform", "/v1/availability", {"region": "340100", "from": "2026-03-09", "to": "2026-03-15"}),
        ("commission", "/v1/reports/compliance", {"from": "2026-03-01", "to": "2026-03-31"}),
        ("commission", "/v1/shortfalls", {}),
        ("city_hospital", "/v1/hospital/shortfalls", {}),
        ("chc_a", "/v1/pool/slots", {}),
    ]
    for who, path, params in reads:
        r = await client.get(path, params=params, headers=world.auth(who))
        assert r.status_code < 500, (path, r.status_code, r.text)
    r = await client.get("/fhir/Schedule", headers=world.auth("commission"))
    assert [e["resource"]["id"] for e in r.json().get("entry", [])] != []
    assert str(bad) not in [e["resource"]["id"] for e in r.json()["entry"]]
    r = await client.get(f"/fhir/Schedule/{bad}", headers=world.auth("commission"))
    assert r.status_code == 404
    # Its hospital can take it out.
    r = await client.delete(
        f"/v1/hospital/sessions/{bad}",
        params={"reason": "9999 pushed in error"},
        headers=world.auth("city_hospital"),
    )
    assert r.status_code == 200, r.text


# --- fuzzing every date-taking operation ---------------------------------------------------------

EXTREME_DAYS = [
    date(1, 1, 1),
    date(1, 1, 2),
    date(1999, 12, 31),
    date(2101, 1, 1),
    date(9999, 12, 30),
    date(9999, 12, 31),
]
OFFSETS = [
    None,
    UTC,
    timezone(timedelta(hours=14)),
    timezone(timedelta(hours=-14)),
    timezone(timedelta(hours=8)),
]

days = st.one_of(st.sampled_from(EXTREME_DAYS), st.dates())
instants = st.one_of(
    st.builds(lambda d, tz: datetime(d.year, d.month, d.day, 23, 59, 59, tzinfo=tz), st.sampled_from(EXTREME_DAYS),
              st.sampled_from(OFFSETS)),
    st.datetimes(timezones=st.sampled_from(OFFSETS)),
)  # fmt: skip


def pushes(day: date, when: datetime) -> list[dict[str, Any]]:
    """Push bodies whose date or one instant is ``day``/``when``."""
    item = far_item("FUZZ", day)
    public = session_item("FUZZP", DAY, slots=1) | {"public_at": when.isoformat()}
    slot = session_item("FUZZS", DAY, slots=1)
    slot["slots"][0]["starts_at"] = when.isoformat()
    end = session_item("FUZZE", DAY, slots=1)
    end["slots"][0]["ends_at"] = when.isoformat()
    return [{"sessions": [b]} for b in (item, public, slot, end)]  # fmt: skip


async def send_all(
    client: httpx.AsyncClient, world: World, slot_id: int, day: date, when: datetime
) -> list[tuple[str, int]]:
    """Every operation that takes a date or an instant, once with ``day`` and once with ``when``."""
    d, t = day.isoformat(), when.isoformat()
    calls: list[tuple[str, str, str, dict[str, Any]]] = [
        *[("POST", "/v1/hospital/sessions", "city_hospital", {"json": body}) for body in pushes(day, when)],
        ("POST", "/v1/referrals", "chc_a", {"json": booking(slot_id, 1, clock=world.clock, encountered_at=when)}),
        ("POST", "/v1/contracts/sync", "platform", {"json": {"contracts": [contract_row(9, starts_on=day)]}}),
        ("POST", "/v1/contracts/sync", "platform", {"json": {"contracts": [contract_row(9, ends_on=day)]}}),
        ("POST", "/v1/policies", "commission", {"json": _policy(d)}),
        ("POST", "/v1/supervision/suspensions", "commission", {"json": {
            "subject_type": "institution", "organisation_code": "P-B", "mode": "suspended",
            "reason": "fuzz", "until": t}}),
        ("GET", "/v1/reports/compliance", "commission", {"params": {"from": d, "to": d}}),
        ("GET", "/v1/reports/compliance", "commission", {"params": {"from": "2026-03-01", "to": d}}),
        ("GET", "/v1/audit", "commission", {"params": {"from": t}}),
        ("GET", "/v1/audit", "commission", {"params": {"to": t}}),
        ("POST", "/v1/audit/search", "commission", {"json": {"from": t}}),
        ("POST", "/v1/audit/search", "commission", {"json": {"to": t}}),
        ("GET", "/v1/availability", "platform", {"params": {"region": "340100", "from": d, "to": d}}),
        ("GET", "/v1/shortfalls", "commission", {"params": {"date_from": d}}),
        ("GET", "/v1/hospital/shortfalls", "city_hospital", {"params": {"date_to": d}}),
        ("GET", "/v1/referrals", "city_hospital", {"params": {"service_date": d}}),
        ("GET", "/v1/pool/slots", "chc_a", {"params": {"service_date": d}}),
        ("GET", "/v1/referrals", "chc_a", {"params": {"cursor": encode_cursor(d, 1)}}),
        ("GET", "/v1/hospital/worklist", "city_hospital", {"params": {"cursor": encode_cursor(t, 1)}}),
        ("GET", "/fhir/Schedule", "commission", {"params": {"date": f"ge{d}"}}),
        ("GET", "/fhir/Schedule", "commission", {"params": {"date": f"lt{t}"}}),
        ("GET", "/fhir/Slot", "commission", {"params": {"start": f"le{t}"}}),
        ("GET", "/fhir/Appointment", "chc_a", {"params": {"date": f"eq{d}"}}),
    ]  # fmt: skip
    answers = []
    for method, path, who, kwargs in calls:
        r = await client.request(method, path, headers=world.auth(who), **kwargs)
        answers.append((f"{method} {path} {kwargs}", r.status_code))
    return answers


def _policy(effective_from: str) -> dict[str, Any]:
    from tests.test_policies import policy_body

    return policy_body(effective_from=effective_from)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(day=days, when=instants)
async def test_no_extreme_date_or_instant_gets_a_5xx(client, world, day, when):
    # The same world serves every example: the first one builds it, the others find it.
    await push(client, world, [session_item("S1", DAY, slots=10)])
    await sign(client, world, [1])
    slot_id = (await pool_slots(client, world))[0]["slot_id"]
    answers = await send_all(client, world, slot_id, day, when)
    assert [a for a in answers if a[1] >= 500] == []


async def test_a_policy_stored_out_of_the_window_is_still_listed(client, world, db):
    await db.run(lambda s: s.execute(text("UPDATE policies SET effective_from = '0001-01-01'")))
    r = await client.get("/v1/policies", headers=world.auth("chc_a"))
    assert r.status_code == 200, r.text
    assert {p["effective_from"] for p in r.json()["items"]} == {"0001-01-01"}
