"""The platform availability feed: counts, the pool window by the clock, ETag/304, the since cursor."""

from __future__ import annotations

import json
from datetime import date, datetime

import asyncpg
import pytest
from sqlalchemy import text

from service.availability import service as availability
from service.availability.schemas import AvailabilityOut
from service.kit.clock import SHANGHAI
from service.slots.release import release_due_slots
from tests.factories import book, booking, pool_slots, push, session_item, sign, synthetic_id
from tests.test_resource_kinds import (
    LUNG,
    STROKE_AND_MI,
    bed_item,
    exam_item,
    kind_policy,
    publish_and_assign,
)

DAY = date(2026, 3, 10)  # public 3 March 08:00, pool open since 2 March 08:00 (the test's now: 09:00)
LATER = date(2026, 3, 12)  # public 5 March 08:00, pool opens 4 March 08:00
WINDOW = {"region": "340100", "from": "2026-03-09", "to": "2026-03-15"}
ZERO = {"public": 0, "pool_pending": 0, "pool_open": 0, "booked": 0, "returned": 0}


async def feed(client, world, expect=200, headers=None, **params):
    r = await client.get(
        "/v1/availability", params={**WINDOW, **params}, headers=world.auth("platform") | (headers or {})
    )
    assert r.status_code == expect, r.text
    return r


def counts(body, **key):
    """The counts of the one item matching ``key``."""
    [item] = [i for i in body["items"] if all(i[k] == v for k, v in key.items())]
    return {k: item[k] for k in ZERO}


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture
async def pushed(client, world):
    """The city hospital: cardiology on DAY (10 slots, 2 held) and on LATER, and a neurology afternoon."""
    await push(
        client,
        world,
        [
            session_item("S1", DAY, slots=10),
            session_item("S2", LATER, slots=10, title="chief", doctor_code="D-2"),
            session_item("S3", DAY, slots=5, department="NEUR", specialty=None, period="afternoon",
                         title="attending", doctor_code="D-3"),
        ],
    )  # fmt: skip
    await sign(client, world, [1, 2, 3])


WARD = {"code": "W-CARD-1", "name": "心内科一病区"}
CT = {"department_code": "RAD", "service_date": DAY.isoformat(), "modality": "CT"}
MRI = {"department_code": "RAD", "service_date": DAY.isoformat(), "modality": "MRI"}
BEDS = {"department_code": "CARD", "service_date": DAY.isoformat(), "resource_kind": "bed"}


@pytest.fixture
async def kinds(client, world, pushed):
    """Beside the visits, on DAY: radiology's CT block (8 slots, 4 held, and 4 more with a doctor
    named, 2 held) and MRI block (4 slots, 2 held), and cardiology's ward (10 beds, 3 held)."""
    await publish_and_assign(client, world, kind_policy("test-ct", "examination"))
    await publish_and_assign(
        client, world, kind_policy("test-beds", "bed", ratio="0.3", disease_prefixes=STROKE_AND_MI)
    )
    ct_with_doctor = exam_item("CT2", slots=4) | {
        "doctor": {"code": "D-RAD", "name": "李医生", "title": "attending"}
    }
    results = await push(
        client,
        world,
        [exam_item("CT1", slots=8), ct_with_doctor, exam_item("MR1", modality="MRI", slots=4),
         bed_item("W1", beds=10)],
    )  # fmt: skip
    assert [len(r["pool_slot_numbers"]) for r in results] == [4, 2, 2, 3]


async def test_r19_counts_per_group_follow_bookings(client, world, clock, pushed):
    body = (await feed(client, world)).json()
    AvailabilityOut.model_validate(body)
    card = {"department_code": "CARD", "service_date": DAY.isoformat(), "period": "morning"}
    assert counts(body, **card) == ZERO | {"public": 8, "pool_open": 2}
    assert counts(body, service_date=LATER.isoformat()) == ZERO | {"public": 8, "pool_pending": 2}
    assert counts(body, department_code="NEUR") == ZERO | {"public": 4, "pool_open": 1}
    [hospital] = body["hospitals"]
    assert hospital["id"] == world.ids["city_hospital"]
    assert [d["code"] for d in hospital["departments"]] == ["CARD", "NEUR"]

    slots = await pool_slots(client, world, service_date=DAY.isoformat(), title="associate_chief")
    await book(client, world, booking(slots[0]["slot_id"], 1, clock=clock))
    body = (await feed(client, world)).json()
    assert counts(body, **card) == ZERO | {"public": 8, "pool_open": 1, "booked": 1}


async def test_r18_counts_per_kind_follow_bookings(client, world, clock, kinds):
    body = (await feed(client, world)).json()
    AvailabilityOut.model_validate(body)
    on_day = [i for i in body["items"] if i["service_date"] == DAY.isoformat()]
    # Per department and period: visits by doctor title, examinations by modality, beds by ward.
    assert [(i["department_code"], i["period"], i["resource_kind"], i["doctor_title"], i["modality"],
             i["ward"]) for i in on_day] == [
        ("CARD", "morning", "outpatient", "associate_chief", None, None),
        ("CARD", "morning", "bed", None, None, WARD),
        ("NEUR", "afternoon", "outpatient", "attending", None, None),
        ("RAD", "morning", "examination", None, "CT", None),
        ("RAD", "morning", "examination", None, "MRI", None),
    ]  # fmt: skip
    visits = {"department_code": "CARD", "service_date": DAY.isoformat(), "resource_kind": "outpatient"}
    assert counts(body, **visits) == ZERO | {"public": 8, "pool_open": 2}
    assert counts(body, **CT) == ZERO | {"public": 6, "pool_open": 6}  # both blocks, a doctor named or not
    assert counts(body, **MRI) == ZERO | {"public": 2, "pool_open": 2}
    assert counts(body, **BEDS) == ZERO | {"public": 7, "pool_open": 3}
    [hospital] = body["hospitals"]
    assert hospital["departments"] == [
        {"code": "CARD", "name": "心血管内科"},
        {"code": "NEUR", "name": "心血管内科"},
        {"code": "RAD", "name": "医学影像科"},
    ]

    [ct, *_] = await pool_slots(client, world, resource_kind="examination", modality="CT")
    [bed, *_] = await pool_slots(client, world, resource_kind="bed")
    await book(client, world, booking(ct["slot_id"], 1, clock=clock, diagnoses=LUNG[1:]))
    await book(client, world, booking(bed["slot_id"], 2, clock=clock, diagnoses=["I63.9"]))
    after = (await feed(client, world)).json()
    assert counts(after, **CT) == ZERO | {"public": 6, "pool_open": 5, "booked": 1}
    assert counts(after, **BEDS) == ZERO | {"public": 7, "pool_open": 2, "booked": 1}
    assert counts(after, **MRI) == counts(body, **MRI)
    assert counts(after, **visits) == counts(body, **visits)


async def test_r18_filters_by_kind_and_modality(client, world, kinds):
    def kinds_of(body):
        return [(i["department_code"], i["resource_kind"], i["modality"]) for i in body["items"]]

    everything = (await feed(client, world)).json()  # warms the hospital-day cache unfiltered
    exams = (await feed(client, world, resource_kind="examination")).json()
    assert kinds_of(exams) == [("RAD", "examination", "CT"), ("RAD", "examination", "MRI")]
    assert (exams["query"]["resource_kind"], exams["query"]["modality"]) == ("examination", None)
    mri = (await feed(client, world, modality="MRI")).json()
    assert kinds_of(mri) == [("RAD", "examination", "MRI")]
    assert [d["code"] for d in mri["hospitals"][0]["departments"]] == ["RAD"]
    beds = (await feed(client, world, resource_kind="bed")).json()
    assert [(i["department_code"], i["ward"]) for i in beds["items"]] == [("CARD", WARD)]
    visits = (await feed(client, world, resource_kind="outpatient")).json()
    assert [i for i in everything["items"] if i["resource_kind"] == "outpatient"] == visits["items"]
    assert len(visits["items"]) == 3
    assert (await feed(client, world, resource_kind="outpatient", modality="CT")).json()["items"] == []
    narrow = await feed(client, world, department_code="RAD", resource_kind="examination", modality="CT")
    assert kinds_of(narrow.json()) == [("RAD", "examination", "CT")]
    # Another filter is another representation.
    assert len({r.headers["etag"] for r in (await feed(client, world), narrow)}) == 2


async def test_r5_r6_pending_open_and_returned_follow_the_clock_not_the_release_loop(
    client, world, clock, pushed, db
):
    later = {"service_date": LATER.isoformat()}
    clock.set(datetime(2026, 3, 4, 8, 0, tzinfo=SHANGHAI))  # LATER's pool window opens
    assert counts((await feed(client, world)).json(), **later) == ZERO | {"public": 8, "pool_open": 2}
    clock.set(datetime(2026, 3, 5, 8, 0, tzinfo=SHANGHAI))  # LATER's public release
    assert counts((await feed(client, world)).json(), **later) == ZERO | {"public": 8, "returned": 2}
    assert await release_due_slots(db, clock, batch_size=100) > 0
    assert counts((await feed(client, world)).json(), **later) == ZERO | {"public": 8, "returned": 2}


async def test_r19_filters_by_hospital_and_department(client, world, pushed):
    body = (await feed(client, world, department_code="NEUR")).json()
    assert {i["department_code"] for i in body["items"]} == {"NEUR"}
    body = (await feed(client, world, hospital_id=world.ids["provincial_hospital"])).json()
    assert body["items"] == []
    assert body["hospitals"] == []


async def test_r19_etag_and_304(client, world, clock, pushed):
    first = await feed(client, world)
    etag = first.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert "no-cache" in first.headers["cache-control"]
    assert "private" in first.headers["cache-control"]

    assert (await feed(client, world, expect=304, headers={"If-None-Match": etag})).content == b""
    not_modified = await feed(client, world, expect=304, headers={"If-None-Match": f'"x", W/{etag}'})
    assert not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    # Another query is another representation.
    other = await feed(client, world, headers={"If-None-Match": etag}, to="2026-03-14")
    assert other.headers["etag"] != etag

    slots = await pool_slots(client, world, service_date=DAY.isoformat(), title="associate_chief")
    await book(client, world, booking(slots[0]["slot_id"], 1, clock=clock))
    changed = await feed(client, world, headers={"If-None-Match": etag})
    assert changed.headers["etag"] != etag
    assert counts(changed.json(), department_code="CARD", service_date=DAY.isoformat())["booked"] == 1


async def test_r19_a_whole_window_is_read_in_one_read_only_snapshot(client, world, pushed, monkeypatch):
    """The digests, the fragments rendered for them and the cursor come from one snapshot."""
    seen = []
    original = availability.read_window

    async def read_window(*, session, window, cache):
        for name in ("transaction_isolation", "transaction_read_only"):
            seen.append((await session.execute(text(f"SHOW {name}"))).scalar_one())
        return await original(session=session, window=window, cache=cache)

    monkeypatch.setattr(availability, "read_window", read_window)
    await feed(client, world)
    assert seen == ["repeatable read", "on"]


async def test_r19_etag_changes_when_only_the_clock_moves_counts(client, world, clock, pushed):
    etag = (await feed(client, world)).headers["etag"]
    clock.set(datetime(2026, 3, 4, 8, 0, tzinfo=SHANGHAI))
    assert (await feed(client, world, headers={"If-None-Match": etag})).headers["etag"] != etag


async def test_r19_since_returns_only_changed_department_days_with_full_counts(client, world, clock, pushed):
    cursor = (await feed(client, world)).json()["cursor"]
    quiet = (await feed(client, world, since=cursor)).json()
    assert quiet["items"] == []
    assert quiet["replaces"] == []

    slots = await pool_slots(client, world, service_date=DAY.isoformat(), title="associate_chief")
    await book(client, world, booking(slots[0]["slot_id"], 1, clock=clock))
    body = (await feed(client, world, since=cursor)).json()
    AvailabilityOut.model_validate(body)
    hospital_id = world.ids["city_hospital"]
    assert body["replaces"] == [
        {"hospital_id": hospital_id, "department_code": "CARD", "service_date": DAY.isoformat()}
    ]
    assert [counts(body, department_code="CARD")] == [ZERO | {"public": 8, "pool_open": 1, "booked": 1}]
    assert len(body["items"]) == 1

    # From the new cursor on, that booking is old news.
    assert (await feed(client, world, since=body["cursor"])).json()["replaces"] == []


async def test_r19_since_reports_a_window_that_opened_by_the_clock(client, world, clock, pushed):
    cursor = (await feed(client, world)).json()["cursor"]
    clock.set(datetime(2026, 3, 4, 8, 0, tzinfo=SHANGHAI))
    body = (await feed(client, world, since=cursor)).json()
    # LATER's pool opened; DAY's closed on the way (3 March 08:00): all three department-days moved.
    assert [(d["department_code"], d["service_date"]) for d in body["replaces"]] == [
        ("CARD", DAY.isoformat()),
        ("NEUR", DAY.isoformat()),
        ("CARD", LATER.isoformat()),
    ]
    assert counts(body, service_date=LATER.isoformat()) == ZERO | {"public": 8, "pool_open": 2}
    assert counts(body, department_code="CARD", service_date=DAY.isoformat()) == ZERO | {
        "public": 8,
        "returned": 2,
    }
    clock.set(datetime(2026, 3, 4, 9, 0, tzinfo=SHANGHAI))  # nothing opens or closes in this hour
    assert (await feed(client, world, since=body["cursor"])).json()["replaces"] == []


async def test_r19_since_misses_nothing_committed_after_the_poll_by_an_older_transaction(
    client, world, clock, pushed, clean_db
):
    """A write made before a poll but committed after it is in the next since answer, even though a
    younger transaction's write was committed and seen by that poll (a "highest change seen" cursor
    would skip the older one)."""
    neur = await pool_slots(client, world, service_date=DAY.isoformat(), title="attending")
    card = await pool_slots(client, world, service_date=DAY.isoformat(), title="associate_chief")
    conn = await asyncpg.connect(plain(clean_db))
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("UPDATE slots SET status = 'booked' WHERE id = $1", neur[0]["slot_id"])
        await book(client, world, booking(card[0]["slot_id"], 1, clock=clock))  # younger, committed first
        first = (await feed(client, world)).json()  # sees the CARD booking, not the NEUR one
        assert counts(first, department_code="CARD", service_date=DAY.isoformat())["booked"] == 1
        assert counts(first, department_code="NEUR")["booked"] == 0
        await tx.commit()
    finally:
        await conn.close()
    body = (await feed(client, world, since=first["cursor"])).json()
    assert [d["department_code"] for d in body["replaces"]] == ["NEUR"]
    assert counts(body, department_code="NEUR") == ZERO | {"public": 4, "booked": 1}


async def test_r18_since_reports_an_examination_booking(client, world, clock, kinds):
    cursor = (await feed(client, world)).json()["cursor"]
    [ct, *_] = await pool_slots(client, world, resource_kind="examination", modality="CT")
    await book(client, world, booking(ct["slot_id"], 1, clock=clock, diagnoses=LUNG[1:]))
    body = (await feed(client, world, since=cursor)).json()
    AvailabilityOut.model_validate(body)
    assert body["replaces"] == [
        {"hospital_id": world.ids["city_hospital"], "department_code": "RAD", "service_date": DAY.isoformat()}
    ]
    # The whole department-day, with full counts: the MRI block too.
    assert [(i["modality"], i["pool_open"], i["booked"]) for i in body["items"]] == [
        ("CT", 5, 1),
        ("MRI", 2, 0),
    ]
    beds = (await feed(client, world, since=cursor, resource_kind="bed")).json()
    assert (beds["replaces"], beds["items"]) == ([], [])
    assert (await feed(client, world, since=body["cursor"])).json()["replaces"] == []


async def test_r18_a_changed_modality_or_ward_reaches_warm_and_since_answers(client, world, kinds):
    first = (await feed(client, world)).json()  # the hospital-days are cached
    ward_2 = {"code": "W-CARD-2", "name": "心内科二病区"}
    await push(
        client,
        world,
        [exam_item("CT1", slots=8, modality="MRI", version=2), bed_item("W1", version=2) | {"ward": ward_2}],
    )
    body = (await feed(client, world)).json()
    assert counts(body, **CT) == ZERO | {"public": 2, "pool_open": 2}  # CT2 is the only CT block left
    assert counts(body, **MRI) == ZERO | {"public": 6, "pool_open": 6}
    assert [i["ward"] for i in body["items"] if i["resource_kind"] == "bed"] == [ward_2]

    changes = (await feed(client, world, since=first["cursor"])).json()
    replaced = [(d["department_code"], d["service_date"]) for d in changes["replaces"]]
    assert replaced == [("CARD", DAY.isoformat()), ("RAD", DAY.isoformat())]
    assert changes["items"] == [
        i for i in body["items"] if (i["department_code"], i["service_date"]) in replaced
    ]


async def test_r19_since_replaces_a_department_day_whose_session_changed_period(client, world, pushed):
    cursor = (await feed(client, world)).json()["cursor"]
    await push(client, world, [session_item("S1", DAY, slots=10, period="afternoon", version=2)])
    body = (await feed(client, world, since=cursor)).json()
    assert [(d["department_code"], d["service_date"]) for d in body["replaces"]] == [
        ("CARD", DAY.isoformat())
    ]
    assert [(i["period"], i["pool_open"]) for i in body["items"]] == [("afternoon", 2)]


async def test_r15_platform_responses_carry_no_personal_data(client, world, clock, pushed):
    slots = await pool_slots(client, world, service_date=DAY.isoformat(), title="associate_chief")
    referral = await book(client, world, booking(slots[0]["slot_id"], 1, clock=clock))
    cursor = (await feed(client, world, to="2026-03-10")).json()["cursor"]
    await book(client, world, booking(slots[1]["slot_id"], 2, clock=clock))
    for r in (await feed(client, world), await feed(client, world, since=cursor)):
        body = r.json()
        AvailabilityOut.model_validate(body)  # extra="forbid": only the documented fields
        item_keys = {"hospital_id", "department_code", "service_date", "period", "resource_kind",
                     "doctor_title", "modality", "ward", *ZERO}  # fmt: skip
        assert all(set(i) == item_keys for i in body["items"])
        assert all(set(h) == {"id", "code", "name", "region_code", "departments"} for h in body["hospitals"])
        text = r.text
        for secret in (
            synthetic_id("340102", seq=1),
            synthetic_id("340102", seq=2),
            "张1",
            "张2",
            "王医生",  # the doctor's name
            "D-associate_chief",  # the doctor's code
            "FD-1",
            referral["reference"],
            referral["verification_code"],
            "ENC-1",
        ):
            assert secret not in text, secret
        assert "I10" not in json.dumps(body["items"])


@pytest.mark.parametrize(
    ("who", "params", "status", "code"),
    [
        ("chc_a", {}, 403, "wrong_role"),
        ("platform", {"region": "340200"}, 403, "region_out_of_scope"),
        ("platform", {"region": "340202"}, 403, "region_out_of_scope"),
        ("platform", {"region": "340000"}, 422, "region_too_wide"),
        ("platform", {"to": "2026-03-16"}, 422, "date_range_too_wide"),
        ("platform", {"to": "2026-03-08"}, 422, "invalid_date_range"),
        ("platform", {"since": "bm9wZQ"}, 422, "invalid_cursor"),
        ("platform", {"since": "%%%"}, 422, "invalid_cursor"),
        ("platform", {"region": "3401"}, 422, "invalid_request"),
        ("platform", {"resource_kind": "ward"}, 422, "invalid_request"),
        ("platform", {"modality": "MR"}, 422, "invalid_request"),
    ],
)
async def test_r19_refusals(client, world, who, params, status, code):
    r = await client.get("/v1/availability", params={**WINDOW, **params}, headers=world.auth(who))
    assert r.status_code == status, r.text
    assert r.json()["code"] == code


async def test_r19_a_county_inside_the_platform_city_is_in_scope(client, world, pushed):
    body = (await feed(client, world, region="340104")).json()  # the city hospital's district
    assert body["items"]
    assert (await feed(client, world, region="340102")).json()["items"] == []


async def test_r19_counts_table_equals_a_recount_of_the_slots(client, world, clock, kinds, db):
    """Pushes of every kind, updates that drop slots or change a modality or ward, bookings,
    cancellations, withdrawals and releases."""
    from sqlalchemy import text

    slots = await pool_slots(client, world, service_date=DAY.isoformat(), title="associate_chief")
    first = await book(client, world, booking(slots[0]["slot_id"], 1, clock=clock))
    await book(client, world, booking(slots[1]["slot_id"], 2, clock=clock))
    [ct, *_] = await pool_slots(client, world, resource_kind="examination", modality="CT")
    exam = await book(client, world, booking(ct["slot_id"], 3, clock=clock, diagnoses=LUNG[1:]))
    [bed, *_] = await pool_slots(client, world, resource_kind="bed")
    await book(client, world, booking(bed["slot_id"], 3, clock=clock, diagnoses=["I63.9"]))
    for referral in (first, exam):
        r = await client.post(
            f"/v1/referrals/{referral['reference']}/cancel", json={"reason": "x"}, headers=world.auth("chc_a")
        )
        assert r.status_code == 200, r.text
    await push(
        client,
        world,
        [session_item("S2", LATER, slots=6, title="chief", doctor_code="D-2", version=2),
         exam_item("MR1", modality="MRI", slots=2, version=2),
         exam_item("CT2", modality="ultrasound", slots=4, version=2),
         bed_item("W1", version=2) | {"ward": {"code": "W-CARD-1", "name": "心内科一病区(东)"}}],
    )  # fmt: skip
    await push(
        client,
        world,
        [{**session_item("S3", DAY, slots=5, department="NEUR", specialty=None, period="afternoon",
                         title="attending", doctor_code="D-3", version=2),
          "status": "withdrawn", "withdrawn_reason": "停诊"}],
    )  # fmt: skip
    clock.set(datetime(2026, 3, 3, 8, 0, tzinfo=SHANGHAI))
    await release_due_slots(db, clock, batch_size=100)

    # The counts, and the group keys copied from each session: a visit's title, an examination's
    # modality, a bed day's ward.
    recount = """
        SELECT s.session_id, s.pool_opens_at, s.public_at, cs.period, cs.resource_kind,
               CASE WHEN cs.resource_kind = 'outpatient' THEN cs.doctor_title END AS doctor_title,
               cs.modality, cs.ward_code, cs.ward_name,
               count(*) FILTER (WHERE s.status = 'public') AS public,
               count(*) FILTER (WHERE s.status = 'reserved') AS reserved,
               count(*) FILTER (WHERE s.status = 'booked') AS booked,
               count(*) FILTER (WHERE s.status = 'returned') AS returned
        FROM slots s JOIN clinic_sessions cs ON cs.id = s.session_id
        WHERE s.status <> 'withdrawn' GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9 ORDER BY 1, 2, 3
    """
    kept = """
        SELECT session_id, pool_opens_at, public_at, period, resource_kind, doctor_title, modality,
               ward_code, ward_name, public, reserved, booked, returned
        FROM availability_counts WHERE public + reserved + booked + returned > 0 ORDER BY 1, 2, 3
    """
    expected = (await db.run(lambda s: s.execute(text(recount)))).all()
    actual = (await db.run(lambda s: s.execute(text(kept)))).all()
    assert actual == expected
    assert {row.returned for row in actual} >= {1}  # the release did happen
    assert {row.resource_kind for row in actual if row.booked} == {"outpatient", "bed"}
    assert {row.modality for row in actual} == {None, "CT", "MRI", "ultrasound"}
    assert {row.ward_name for row in actual} == {None, "心内科一病区(东)"}
    negative = await db.run(
        lambda s: s.scalar(
            text(
                "SELECT count(*) FROM availability_counts WHERE least(public, reserved, booked, returned) < 0"
            )
        )
    )
    assert negative == 0


async def test_r19_warm_answers_follow_renames_and_agree_with_since_answers(client, world, clock, pushed, db):
    """Full answers are assembled from cached hospital-days; every change reaches them."""
    from sqlalchemy import text

    first = (await feed(client, world)).json()
    await push(client, world, [session_item("S1", DAY, slots=10, version=2) | {
        "department": {"code": "CARD", "name": "心内科", "specialty": "cardiology"}}])  # fmt: skip
    await db.run(
        lambda s: s.execute(text("UPDATE organisations SET name = '合肥一院' WHERE code = 'H-CITY'"))
    )
    slots = await pool_slots(client, world, service_date=DAY.isoformat(), title="attending")
    await book(client, world, booking(slots[0]["slot_id"], 1, clock=clock))
    body = (await feed(client, world)).json()
    [hospital] = body["hospitals"]
    assert hospital["name"] == "合肥一院"
    assert {"code": "CARD", "name": "心内科"} in hospital["departments"]
    assert counts(body, department_code="NEUR") == ZERO | {"public": 4, "booked": 1}
    # Ordered by hospital, date, department, period, title.
    keys = [(i["hospital_id"], i["service_date"], i["department_code"]) for i in body["items"]]
    assert keys == sorted(keys)

    changes = (await feed(client, world, since=first["cursor"])).json()
    replaced = {(d["department_code"], d["service_date"]) for d in changes["replaces"]}
    assert ("NEUR", DAY.isoformat()) in replaced
    assert [i for i in body["items"] if (i["department_code"], i["service_date"]) in replaced] == changes[
        "items"
    ]
