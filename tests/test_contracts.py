"""The published contracts: the OpenAPI document and the event schemas match what the code does."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jsonschema
from jsonschema import Draft202012Validator, FormatChecker
from sqlalchemy import select

from service.app import create_app
from service.kit.clock import instant
from service.models.events import (
    EVENT_TYPES,
    EVENT_VERSIONS,
    INSTITUTION_EVENT_TYPES,
    INSTITUTION_EVENT_VERSIONS,
    TEST_EVENT_TYPE,
    Event,
)
from service.slots.release import release_due_slots
from tests.factories import booking, contract_row, session_item, synthetic_id

CONTRACTS = Path(__file__).resolve().parent.parent / "contracts"
EVENT_SCHEMAS = CONTRACTS / "events"
# A primary institution's events: schemas of their own, versioned on their own (docs/webhooks.md).
INSTITUTION_SCHEMAS = EVENT_SCHEMAS / "institution"
DAY = date(2026, 3, 10)  # public release 3 March 08:00; the pool opened 2 March 08:00
RESIDENTS = {1: "340102", 2: "340102", 3: "340102", 4: "340102"}  # seq -> region of the synthetic ID

# RFC 3339 date-time, offset required. jsonschema only checks "date-time" when the optional
# rfc3339-validator is installed, so the check is registered here rather than left to chance.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$",
)
FORMATS = FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _is_rfc3339(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _RFC3339.fullmatch(value):
        return False
    datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    return True


def _json(value: Any) -> Any:
    """Normalise through a JSON round trip, as a stored file would be."""
    return json.loads(json.dumps(value))


def _schema_files(directory: Path = EVENT_SCHEMAS) -> list[Path]:
    return sorted(directory.glob("*.schema.json"))


def _schema_for(event_type: str, directory: Path = EVENT_SCHEMAS) -> dict[str, Any]:
    """The newest version of the schema of ``event_type`` (in ``directory``: a hospital's by default)."""
    pattern = re.compile(rf"^{re.escape(event_type)}\.v(\d+)\.schema\.json$")
    versions = {int(m[1]): p for p in _schema_files(directory) if (m := pattern.match(p.name))}
    assert versions, f"no schema for {event_type} in {directory}"
    return json.loads(versions[max(versions)].read_text())


def _validator(event_type: str) -> Draft202012Validator:
    return Draft202012Validator(_schema_for(event_type), format_checker=FORMATS)


def institution_validator(event_type: str) -> Draft202012Validator:
    """The newest schema of a primary institution's event of ``event_type``."""
    return Draft202012Validator(_schema_for(event_type, INSTITUTION_SCHEMAS), format_checker=FORMATS)


# --- OpenAPI --------------------------------------------------------------------------------


def test_openapi_matches_contract(settings):
    app = create_app(settings, database_url="postgresql://unused/unused", run_loops=False)
    actual = _json(app.openapi())
    expected = json.loads((CONTRACTS / "openapi.json").read_text())
    if actual != expected:
        paths = sorted(set(actual.get("paths", {})) ^ set(expected.get("paths", {})))
        paths += sorted(
            p
            for p in set(actual.get("paths", {})) & set(expected.get("paths", {}))
            if actual["paths"][p] != expected["paths"][p]
        )
        a_schemas = actual.get("components", {}).get("schemas", {})
        e_schemas = expected.get("components", {}).get("schemas", {})
        schemas = sorted(k for k in set(a_schemas) | set(e_schemas) if a_schemas.get(k) != e_schemas.get(k))
        raise AssertionError(
            "contracts/openapi.json is out of date with the code "
            f"(paths differing: {paths or 'none'}; schemas differing: {schemas or 'none'}). "
            "If the API change is intended, run `.venv/bin/slotpool openapi > contracts/openapi.json` "
            "and commit the result."
        )


# --- event schemas --------------------------------------------------------------------------


def test_every_event_type_has_a_schema():
    files = _schema_files()
    assert files, f"no event schemas in {EVENT_SCHEMAS}"
    for path in files:
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        match = re.fullmatch(r"(.+)\.v(\d+)\.schema\.json", path.name)
        assert match, f"{path.name}: name it <type>.v<N>.schema.json"
        event_type, version = match.groups()
        assert event_type in EVENT_VERSIONS, f"{path.name} describes no event type the code emits"
        assert int(version) <= EVENT_VERSIONS[event_type], f"{path.name}: newer than the code writes"
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", path.name
        assert schema["$id"] == f"urn:slotpool:event:{event_type}:v{version}", path.name
        assert schema["properties"]["type"] == {**schema["properties"]["type"], "const": event_type}
        assert schema.get("title") and schema.get("description"), path.name
    assert set(EVENT_VERSIONS) == {*EVENT_TYPES, TEST_EVENT_TYPE}
    for event_type, version in EVENT_VERSIONS.items():
        # The version the code writes is the newest file, and the envelope names it.
        newest = _schema_for(event_type)
        assert newest["$id"] == f"urn:slotpool:event:{event_type}:v{version}", event_type
        assert newest["properties"]["version"] == {**newest["properties"]["version"], "const": version}
        assert newest["required"][:2] == ["type", "version"], event_type
    # A test event lists what its endpoint subscribes to: any type an endpoint may subscribe to.
    subscribable = _schema_for(TEST_EVENT_TYPE)["properties"]["data"]["properties"]["event_types"]
    assert subscribable["items"]["enum"] == list(EVENT_TYPES)


def test_every_institution_event_type_has_a_schema():
    """The same rules for a primary institution's schemas, in their own directory and numbering."""
    files = _schema_files(INSTITUTION_SCHEMAS)
    assert files, f"no event schemas in {INSTITUTION_SCHEMAS}"
    for path in files:
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        match = re.fullmatch(r"(.+)\.v(\d+)\.schema\.json", path.name)
        assert match, f"{path.name}: name it <type>.v<N>.schema.json"
        event_type, version = match.groups()
        assert event_type in INSTITUTION_EVENT_VERSIONS, f"{path.name} describes no type institutions get"
        assert int(version) <= INSTITUTION_EVENT_VERSIONS[event_type], f"{path.name}: newer than written"
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", path.name
        assert schema["$id"] == f"urn:slotpool:event:institution:{event_type}:v{version}", path.name
        assert schema["properties"]["type"] == {**schema["properties"]["type"], "const": event_type}
        assert schema.get("title") and schema.get("description"), path.name
        assert _closed_objects(schema) == [], path.name
        # Nothing the institution must not see: no ID number, no code, no hospital-internal ids.
        names = set(_property_names(schema))
        assert not names & {"id_number", "resident_id", "verification_code", "external_id", "his_reference",
                            "diagnoses", "note", "priority"}, path.name  # fmt: skip
    assert set(INSTITUTION_EVENT_VERSIONS) == {*INSTITUTION_EVENT_TYPES, TEST_EVENT_TYPE}
    for event_type, version in INSTITUTION_EVENT_VERSIONS.items():
        newest = _schema_for(event_type, INSTITUTION_SCHEMAS)
        assert newest["$id"] == f"urn:slotpool:event:institution:{event_type}:v{version}", event_type
        assert newest["properties"]["version"] == {**newest["properties"]["version"], "const": version}
        assert newest["required"][:2] == ["type", "version"], event_type
        for field in _date_times(newest):
            assert field["pattern"] == INSTANT_PATTERN, event_type
    subscribable = _schema_for(TEST_EVENT_TYPE, INSTITUTION_SCHEMAS)["properties"]["data"]["properties"]
    assert subscribable["event_types"]["items"]["enum"] == list(INSTITUTION_EVENT_TYPES)


def _property_names(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = list(node.get("properties", {})) if isinstance(node.get("properties"), dict) else []
        return own + [n for v in node.values() for n in _property_names(v)]
    if isinstance(node, list):
        return [n for v in node for n in _property_names(v)]
    return []


def _date_times(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = [node] if node.get("format") == "date-time" else []
        return found + [d for v in node.values() for d in _date_times(v)]
    if isinstance(node, list):
        return [d for v in node for d in _date_times(v)]
    return []


# The one time format (docs/webhooks.md, "Time"): RFC 3339 in UTC with Z, a fraction only when
# the value has one (then six digits).
INSTANT_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{6})?Z$"
INSTANT = re.compile(INSTANT_PATTERN)


def test_the_written_schemas_hold_instants_to_the_one_time_format():
    """Every date-time field of a schema the code writes carries the format's pattern, and the
    pattern accepts exactly what ``kit.clock.instant`` writes."""

    def date_times(node: Any) -> list[dict[str, Any]]:
        if isinstance(node, dict):
            found = [node] if node.get("format") == "date-time" else []
            return found + [d for v in node.values() for d in date_times(v)]
        if isinstance(node, list):
            return [d for v in node for d in date_times(v)]
        return []

    for event_type in EVENT_VERSIONS:
        fields = date_times(_schema_for(event_type))
        assert fields, event_type
        for field in fields:
            assert field["pattern"] == INSTANT_PATTERN, event_type
    at = datetime(2026, 12, 2, 15, 30, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert instant(at) == "2026-12-02T07:30:00Z"
    assert instant(at.replace(microsecond=250_000)) == "2026-12-02T07:30:00.250000Z"
    for written in (instant(at), instant(at.replace(microsecond=1))):
        assert INSTANT.fullmatch(written), written


def _closed_objects(schema: Any, where: str = "$") -> list[str]:
    """Paths of object schemas that allow extra fields or leave a field optional."""
    if not isinstance(schema, dict):
        return []
    problems: list[str] = []
    if schema.get("type") == "object":
        if schema.get("additionalProperties") is not False:
            problems.append(f"{where}: additionalProperties is not false")
        if sorted(schema.get("required", [])) != sorted(schema.get("properties", {})):
            problems.append(f"{where}: required does not list every property")
    for name, sub in schema.get("properties", {}).items():
        problems += _closed_objects(sub, f"{where}.{name}")
    if "items" in schema:
        problems += _closed_objects(schema["items"], f"{where}[]")
    for i, sub in enumerate(schema.get("allOf", [])):
        for key in ("then", "else"):
            problems += _closed_objects(sub.get(key), f"{where}.allOf[{i}].{key}")
    return problems


def test_event_schemas_are_closed():
    for path in _schema_files():
        assert _closed_objects(json.loads(path.read_text())) == [], path.name


# --- the flow that writes every event type --------------------------------------------------


async def _post(client, path: str, body: dict[str, Any], headers: dict[str, str], status: int = 200) -> Any:
    r = await client.post(path, json=body, headers=headers)
    assert r.status_code == status, f"{path}: {r.status_code} {r.text}"
    return r.json()


async def run_flow(client, world, clock, db) -> dict[str, Any]:
    """Push, book, cancel (pool and public), withdraw a session, release, suspend and reinstate the
    referring doctor, report attendance and correct it: every event type.

    Returns the verification codes handed out, so callers can check they leak nowhere.
    """
    hospital, platform, chc = world.auth("city_hospital"), world.auth("platform"), world.auth("chc_a")
    cardiology = session_item("S1", DAY, slots=15)
    neurology = session_item("S2", DAY, slots=10, department="NEUR", specialty="neurology", doctor_code="D-N")
    pushed = await _post(client, "/v1/hospital/sessions", {"sessions": [cardiology, neurology]}, hospital)
    assert [r["result"] for r in pushed["results"]] == ["created", "created"], pushed

    synced = await _post(
        client, "/v1/contracts/sync", {"contracts": [contract_row(seq) for seq in RESIDENTS]}, platform
    )
    assert synced["created"] == len(RESIDENTS), synced

    r = await client.get("/v1/pool/slots", headers=chc)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    card = [s for s in items if s["department"]["code"] == "CARD"]
    neur = [s for s in items if s["department"]["code"] == "NEUR"]
    assert len(card) >= 3 and neur, items
    codes: list[str] = []

    # 1. booked, then cancelled by the referring institution: the slot goes back to the pool.
    ref = await _post(client, "/v1/referrals", booking(card[0]["slot_id"], 1, clock=clock), chc, 201)
    codes.append(ref["verification_code"])
    await _post(client, f"/v1/referrals/{ref['reference']}/cancel", {"reason": "patient recovered"}, chc)

    # 2. booked, then the hospital withdraws the session (停诊): cancelled by the hospital.
    ref = await _post(client, "/v1/referrals", booking(neur[0]["slot_id"], 2, clock=clock), chc, 201)
    codes.append(ref["verification_code"])
    withdrawn = {**neurology, "version": 2, "status": "withdrawn", "withdrawn_reason": "doctor ill"}
    pushed = await _post(client, "/v1/hospital/sessions", {"sessions": [withdrawn]}, hospital)
    assert pushed["results"][0]["result"] == "withdrawn", pushed

    # 3. booked and kept: the referral the later steps act on.
    kept = await _post(client, "/v1/referrals", booking(card[2]["slot_id"], 4, clock=clock), chc, 201)
    codes.append(kept["verification_code"])

    # 4. booked, then cancelled after the public release: the slot goes to the public.
    ref = await _post(client, "/v1/referrals", booking(card[1]["slot_id"], 3, clock=clock), chc, 201)
    codes.append(ref["verification_code"])
    clock.set(datetime.fromisoformat(card[0]["public_at"]) + timedelta(minutes=1))
    await _post(client, f"/v1/referrals/{ref['reference']}/cancel", {"reason": "went elsewhere"}, chc)

    # 5. the release loop returns the slot still reserved from step 1.
    assert await release_due_slots(db, clock) >= 1

    # 6. the commission suspends the referring doctor (the kept referral stays valid), then reinstates.
    commission = world.auth("commission")
    suspension = await _post(
        client,
        "/v1/supervision/suspensions",
        {
            "subject_type": "doctor",
            "organisation_code": "P-A",
            "doctor_code": "FD-1",
            "mode": "suspended",
            "reason": "核查转诊记录",
            "until": (clock.now() + timedelta(days=30)).isoformat(),
        },
        commission,
        201,
    )
    await _post(
        client,
        f"/v1/supervision/suspensions/{suspension['id']}/reinstate",
        {"reason": "核查完毕"},
        commission,
    )

    # 7. after the visit the hospital reports a no-show, then corrects it to attended.
    clock.set(datetime.fromisoformat(kept["slot"]["ends_at"]) + timedelta(hours=1))
    for outcome in ("no_show", "attended"):
        body = {"reports": [{"reference": kept["reference"], "outcome": outcome}]}
        reported = await _post(client, "/v1/hospital/attendance", body, hospital)
        assert reported["results"][0]["result"] in ("recorded", "corrected"), reported
    return {"verification_codes": codes, "kept": kept["reference"]}


async def _stored_events(db, *, institutions: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """The hospitals' events, or the primary institutions' (``institutions``), in order."""
    own = Event.recipient_id != Event.hospital_id if institutions else Event.recipient_id == Event.hospital_id
    async with db.sessionmaker() as session:
        rows = (await session.execute(select(Event.type, Event.payload).where(own).order_by(Event.id))).all()
    return [(row.type, row.payload) for row in rows]


async def test_stored_institution_events_match_their_schemas(client, world, clock, db):
    """The flow's cancellations and attendance reports tell the booker institution too, each in its
    own schema (the full set of institution events: tests/test_institution_events.py)."""
    await run_flow(client, world, clock, db)
    events = await _stored_events(db, institutions=True)
    assert [t for t, _ in events] == [
        "referral.cancelled",
        "referral.cancelled",
        "referral.cancelled",
        "referral.attendance_recorded",
        "referral.attendance_recorded",
    ]
    failures = []
    for i, (event_type, payload) in enumerate(events):
        assert payload.get("version") == INSTITUTION_EVENT_VERSIONS[event_type], f"event {i}: {payload}"
        for error in institution_validator(event_type).iter_errors(payload):
            failures.append(f"event {i} {event_type} at {error.json_path}: {error.message}")
    assert not failures, "stored institution events do not match contracts/events/institution:\n" + "\n".join(
        failures
    )
    assert [p["data"]["cancellation"]["by"] for t, p in events if t == "referral.cancelled"] == [
        "family_doctor",
        "hospital",
        "family_doctor",
    ]


async def test_stored_events_match_their_schemas(client, world, clock, db):
    flow = await run_flow(client, world, clock, db)
    events = await _stored_events(db)
    assert {t for t, _ in events} == set(EVENT_TYPES), [t for t, _ in events]

    failures = []
    for i, (event_type, payload) in enumerate(events):
        assert payload.get("type") == event_type, f"event {i}: row type {event_type}, payload {payload}"
        assert payload.get("version") == EVENT_VERSIONS[event_type], f"event {i}: {payload}"
        for error in _validator(event_type).iter_errors(payload):
            failures.append(f"event {i} {event_type} at {error.json_path}: {error.message}")
    assert not failures, "stored events do not match contracts/events:\n" + "\n".join(failures)

    cancellations = [p["data"]["cancellation"] for t, p in events if t == "referral.cancelled"]
    assert sorted((c["by"], c["slot_returned_to"]) for c in cancellations) == [
        ("family_doctor", "pool"),
        ("family_doctor", "public"),
        ("hospital", None),
    ]
    kept = flow["kept"]
    attendance = [p["data"] for t, p in events if t == "referral.attendance_recorded"]
    assert [(a["referral"]["reference"], a["attendance"]["outcome"]) for a in attendance] == [
        (kept, "no_show"),
        (kept, "attended"),
    ]
    assert [a["attendance"]["previous_outcome"] for a in attendance] == [None, "no_show"]
    access = [(t, p["data"]) for t, p in events if t.startswith("access.")]
    assert [(t, d["subject"]["doctor"], d["references"]) for t, d in access] == [
        ("access.revoked", {"code": "FD-1", "name": "李家庭"}, [kept]),
        ("access.reinstated", {"code": "FD-1", "name": "李家庭"}, [kept]),
    ]
    assert "核查" not in json.dumps(access, ensure_ascii=False)  # the commission's reasons stay in its audit


def test_schemas_reject_drift():
    """The schemas are strict: an extra, missing or mistyped field fails."""
    payload = {
        "type": "slots.returned",
        "version": 3,
        "timestamp": "2026-03-03T00:01:00Z",
        "data": {
            "session": {
                "external_id": "S1",
                "service_date": "2026-03-10",
                "period": "morning",
                "resource_kind": "outpatient",
                "modality": None,
                "ward": None,
            },
            "department": {"code": "CARD", "name": "心血管内科"},
            "public_at": "2026-03-03T00:00:00Z",
            "slots": [
                {
                    "number": 1,
                    "external_id": None,
                    "starts_at": "2026-03-10T00:00:00Z",
                    "ends_at": "2026-03-10T00:15:00.250000Z",
                }
            ],
        },
    }
    validator = _validator("slots.returned")
    validator.validate(payload)
    broken: list[dict[str, Any]] = []
    for mutate in (
        lambda p: p["data"]["slots"][0].update(id_number="340102195804120016"),
        lambda p: p["data"]["session"].pop("external_id"),
        lambda p: p.update(timestamp="3 March 2026"),
        lambda p: p["data"]["slots"][0].update(starts_at="2026-03-10T08:00:00"),  # no offset
        lambda p: p["data"]["slots"][0].update(starts_at="2026-03-10T08:00:00+08:00"),  # not in UTC
        lambda p: p.update(timestamp="2026-03-03T00:01:00+00:00"),  # UTC, but not written with Z
        lambda p: p["data"].update(
            public_at="2026-03-03T00:00:00.25Z"
        ),  # a fraction of other than six digits
        lambda p: p.pop("version"),
        lambda p: p.update(version=2),
        lambda p: p["data"]["session"].update(service_date="2026-02-30"),
        lambda p: p.update(type="referral.booked"),
        lambda p: p["data"]["session"].update(modality="CT"),  # an outpatient session has no modality
        lambda p: p["data"]["session"].update(resource_kind="bed"),  # a bed session names its ward
    ):
        copy = _json(payload)
        mutate(copy)
        broken.append(copy)
    for copy in broken:
        try:
            validator.validate(copy)
        except jsonschema.ValidationError:
            continue
        raise AssertionError(f"accepted a drifted payload: {copy}")


def test_access_schema_rejects_drift():
    """access.revoked ties the subject's fields to its type, and the fixed reason to the mode."""
    payload = {
        "type": "access.revoked",
        "version": 2,
        "timestamp": "2026-03-03T00:01:00Z",
        "data": {
            "subject": {
                "type": "doctor",
                "institution": {"code": "P-A", "name": "瑶海区明光路社区卫生服务中心"},
                "doctor": {"code": "FD-1", "name": "李家庭"},
                "api_client": None,
            },
            "mode": "revoked",
            "until": None,
            "reason": "转诊方的平台访问权限已被卫生健康委撤销",
            "cancel_active_referrals": False,
            "references": ["R260310BMHK3A"],
        },
    }
    validator = _validator("access.revoked")
    validator.validate(payload)
    for mutate in (
        lambda p: p["data"].update(resident={"name_masked": "张*"}),
        lambda p: p["data"]["subject"].update(doctor=None),  # a doctor subject names the doctor
        lambda p: p["data"]["subject"].update(type="institution"),  # an institution names no doctor
        lambda p: p["data"].update(until="2026-03-31T16:00:00Z"),  # a revocation has no end
        lambda p: p["data"].update(mode="suspended"),  # the fixed text is the revocation's
        lambda p: p["data"].update(reason="倒卖号源"),  # never the commission's own words
        lambda p: p["data"].update(references=[]),
    ):
        copy = _json(payload)
        mutate(copy)
        assert not validator.is_valid(copy), f"accepted a drifted payload: {copy}"


# --- personal data ----------------------------------------------------------------------------


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _keys(v)}
    return set()


def _strings(node: Any) -> set[str]:
    if isinstance(node, dict):
        return {s for v in node.values() for s in _strings(v)}
    if isinstance(node, list):
        return {s for v in node for s in _strings(v)}
    return {node} if isinstance(node, str) else set()


FORBIDDEN_KEY = re.compile(r"id_?num|id_?no$|id_?card|id_masked|verification|sfz", re.IGNORECASE)


async def test_events_never_carry_id_numbers(client, world, clock, db):
    flow = await run_flow(client, world, clock, db)
    events = await _stored_events(db)
    assert len(events) >= len(EVENT_TYPES)

    forbidden: set[str] = set()
    for seq, region in RESIDENTS.items():
        id_number = synthetic_id(region, seq=seq)
        forbidden |= {
            id_number,
            id_number[:17],  # without the check character
            id_number[6:14],  # the birth date, YYYYMMDD
            id_number[-4:],  # sequence number and check character
            id_number[0] + "*" * 16 + id_number[-1],  # the masked form of the API responses
        }
    for event_type, payload in events:
        text = json.dumps(payload, ensure_ascii=False)
        leaked = sorted(s for s in forbidden if s in text)
        assert not leaked, f"{event_type} carries ID-number material {leaked}: {text}"
        keys = sorted(k for k in _keys(payload) if FORBIDDEN_KEY.search(k))
        assert not keys, f"{event_type} has personal-data keys {keys}: {text}"
        codes = set(flow["verification_codes"]) & _strings(payload)
        assert not codes, f"{event_type} carries a verification code: {text}"
