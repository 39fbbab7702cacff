"""The release (R6) set-based: its events equal the per-slot ones, batches resume, the fan-out in bulk."""

from __future__ import annotations

import asyncio
import time
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import select, text

from service.models.audit import AuditEntry
from service.models.events import Event
from service.models.registry import Department
from service.models.slots import ClinicSession, Slot
from service.models.webhooks import WebhookDelivery
from service.outbox.events import CHANNEL, emit, emit_many, envelope
from service.slots.release import release_due_slots
from service.slots.returns import returned_event_data
from tests.factories import push, session_item
from tests.test_resource_kinds import bed_item, exam_item, kind_policy, publish_and_assign, valid

DAY = date(2026, 3, 10)  # public 3 March 08:00


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def returned_events(db) -> list[Event]:
    return list(
        await db.run(
            lambda s: s.scalars(select(Event).where(Event.type == "slots.returned").order_by(Event.id))
        )
    )


def fractional(item: dict[str, Any], microseconds: int) -> dict[str, Any]:
    """The item with every instant moved by a fraction of a second."""
    shift = timedelta(microseconds=microseconds)

    def moved(value: str) -> str:
        return (datetime.fromisoformat(value) + shift).isoformat()

    item["public_at"] = moved(item["public_at"])
    for slot in item["slots"]:
        slot["starts_at"], slot["ends_at"] = moved(slot["starts_at"]), moved(slot["ends_at"])
    return item


async def test_r6_released_events_are_the_ones_a_cancellation_would_write(client, world, clock, db):
    """The database builds each session's data; Python's builder for the same slots gives the same body."""
    await publish_and_assign(client, world, kind_policy("test-ct", "examination"))
    await publish_and_assign(client, world, kind_policy("test-bed", "bed"))
    no_ids = session_item("OP-NO-IDS", DAY, slots=10)
    for slot in no_ids["slots"]:
        del slot["external_id"]
    items = [
        session_item("OP1", DAY, slots=10),
        no_ids,
        fractional(session_item("OP-FRAC", DAY, slots=10, period="afternoon", doctor_code="D-9"), 250_000),
        fractional(exam_item("CT1", slots=8), 1),
        bed_item("BED1", beds=6),
    ]
    await push(client, world, items)
    clock.set(datetime(2026, 3, 9, 12, 0, 0, 123_456, tzinfo=clock.now().tzinfo))
    reserved = await db.run(lambda s: s.scalar(text("SELECT count(*) FROM slots WHERE status = 'reserved'")))
    assert await release_due_slots(db, clock) == reserved

    events = await returned_events(db)
    assert len(events) == len(items)
    kinds = set()
    for event in events:
        data = valid(event.payload)
        kinds.add(data["session"]["resource_kind"])

        def expected(s, data=data):
            cs = s.execute(
                select(ClinicSession).where(ClinicSession.external_id == data["session"]["external_id"])
            ).scalar_one()
            numbers = [x["number"] for x in data["slots"]]
            slots = (
                s.execute(select(Slot).where(Slot.session_id == cs.id, Slot.number.in_(numbers)))
                .scalars()
                .all()
            )
            assert {x.status for x in slots} == {"returned"}
            dept = s.get(Department, cs.department_id)
            return returned_event_data(cs, dept, list(slots))

        async def build(session, expected=expected):
            return await session.run_sync(expected)

        body = envelope("slots.returned", await db.run(build), at=clock.now())
        assert event.payload == body
        assert event.created_at == clock.now()
    assert kinds == {"outpatient", "examination", "bed"}
    texts = [e.payload for e in events]
    assert any(s["starts_at"].endswith(".250000Z") for e in texts for s in e["data"]["slots"])
    assert any(s["external_id"] is None for e in texts for s in e["data"]["slots"])


async def test_r6_batches_resume_where_the_last_ended_and_split_a_session_at_most_once(
    client, world, clock, db
):
    days = [DAY + timedelta(days=i) for i in range(3)]
    items = [
        session_item(f"S{d.day}-{p}", d, slots=20, period=p, doctor_code=f"D-{p}")
        for d in days
        for p in ("morning", "afternoon")
    ]
    await push(client, world, items, days_ahead=0)
    reserved = {
        s.id: s for s in await db.run(lambda s: s.scalars(select(Slot).where(Slot.status == "reserved")))
    }
    assert len(reserved) == 6 * 4
    clock.set(datetime(2026, 3, 20, tzinfo=clock.now().tzinfo))

    assert await release_due_slots(db, clock, batch_size=5) == 24
    events = await returned_events(db)
    listed = [(e.payload["data"]["session"]["external_id"], s["number"]) for e in events
              for s in e.payload["data"]["slots"]]  # fmt: skip
    assert len(listed) == len(set(listed)) == 24
    # Batches follow (public_at, session): each boundary cuts at most one session in two.
    sessions = [e.payload["data"]["session"]["external_id"] for e in events]
    assert len(events) <= 6 + (5 - 1)
    assert sessions == sorted(sessions, key=sessions.index)  # a session's events are adjacent
    public_ats = [e.payload["data"]["public_at"] for e in events]
    assert public_ats == sorted(public_ats)

    audit = list(
        await db.run(lambda s: s.scalars(select(AuditEntry).where(AuditEntry.action == "slots.returned")))
    )
    audited = [i for a in audit for i in a.detail["slot_ids"]]
    assert sorted(audited) == sorted(reserved)
    assert {a.hospital_id for a in audit} == {world.ids["city_hospital"]}
    assert await release_due_slots(db, clock, batch_size=5) == 0


async def register(client, world, url: str, types: list[str], who: str = "city_hospital") -> int:
    r = await client.post(
        "/v1/webhooks/endpoints", json={"url": url, "event_types": types}, headers=world.auth(who)
    )
    assert r.status_code == 201, r.text
    endpoint_id: int = r.json()["id"]
    return endpoint_id


def data(i: int) -> dict[str, Any]:
    return {
        "session": {"external_id": f"S-{i}"},
        "slots": [{"number": i, "external_id": None}],
        "note": 'é"\\',
    }


async def test_emit_many_writes_what_emit_writes_with_one_notify(client, world, clock, db, clean_db):
    city, district = world.ids["city_hospital"], world.ids["district_hospital"]
    subscribed = await register(client, world, "http://127.0.0.1:9/his", ["slots.returned"])
    disabled = await register(client, world, "http://127.0.0.1:9/old", ["slots.returned", "referral.booked"])
    await register(client, world, "http://127.0.0.1:9/emr", ["referral.booked"])  # not this type
    # As a receiver's 410 leaves it: its deliveries wait in its queue until it is re-enabled.
    await db.run(
        lambda s: s.execute(
            text("UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = 'gone' WHERE id = :id"),
            {"id": disabled},
        )
    )
    given = [(city, data(1)), (district, data(2)), (city, data(3))]
    at = clock.now()

    listener = await asyncpg.connect(plain(clean_db))
    notified: list[str] = []
    await listener.add_listener(CHANNEL, lambda *args: notified.append(args[-1]))
    try:
        import json

        async def many(session):
            return await emit_many(
                session=session,
                event_type="slots.returned",
                events=[(h, json.dumps(d, ensure_ascii=False)) for h, d in given],
                at=at,
            )

        assert await db.run(many) == 2 * 2  # two city events, two city endpoints of the type
        for _ in range(100):
            if notified:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        assert len(notified) == 1

        for h, d in given:
            await db.run(lambda s, h=h, d=d: emit(session=s, hospital_id=h, event_type="slots.returned",
                                                  data=d, at=at))  # fmt: skip
    finally:
        await listener.close()

    events = list(
        await db.run(
            lambda s: s.scalars(
                select(Event).where(Event.recipient_id == Event.hospital_id).order_by(Event.id)
            )
        )
    )
    bulk, single = events[:3], events[3:]
    assert [(e.hospital_id, e.type, e.payload, e.created_at) for e in bulk] == [
        (e.hospital_id, e.type, e.payload, e.created_at) for e in single
    ]
    assert bulk[0].payload == envelope("slots.returned", data(1), at=at)

    deliveries = list(await db.run(lambda s: s.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id))))
    by_event: dict[int, set[int]] = {}
    for d in deliveries:
        assert (d.status, d.attempts, d.next_attempt_at, d.created_at) == ("pending", 0, at, at)
        by_event.setdefault(d.event_id, set()).add(d.endpoint_id)
    expected = {subscribed, disabled}
    assert by_event == {bulk[0].id: expected, bulk[2].id: expected, single[0].id: expected,
                        single[2].id: expected}  # fmt: skip


async def test_emit_many_of_nothing_writes_nothing(db):
    async def nothing(session):
        return await emit_many(
            session=session, event_type="slots.returned", events=[], at=datetime.now().astimezone()
        )

    assert await db.run(nothing) == 0
    assert await db.run(lambda s: s.scalar(text("SELECT count(*) FROM events"))) == 0


async def test_r19_availability_update_trigger_stays_linear_after_a_one_row_update(
    client, world, clock, db, clean_db
):
    """A connection's first slots UPDATE fixes the trigger's plan; a later big one must not go quadratic.

    With the transition tables joined (0009) and planned for one row, 6,000 slots in one statement
    took tens of seconds; counted from each table on its own it takes well under one.
    """
    [result] = await push(client, world, [session_item("BIG", DAY, slots=10)])
    conn = await asyncpg.connect(plain(clean_db))
    try:
        session_id = await conn.fetchval("SELECT id FROM clinic_sessions WHERE external_id = 'BIG'")
        await conn.execute(
            """
            INSERT INTO slots (session_id, resource_kind, hospital_id, number, external_id, starts_at,
                               ends_at, pool_opens_at, public_at, status)
            SELECT session_id, resource_kind, hospital_id, n, NULL, starts_at, ends_at, pool_opens_at,
                   public_at, 'reserved'
            FROM slots CROSS JOIN generate_series(11, 6010) AS n
            WHERE session_id = $1 AND number = 1
            """,
            session_id,
        )
        one = await conn.fetchval(
            "SELECT min(id) FROM slots WHERE session_id = $1 AND number > 10", session_id
        )
        await conn.execute("UPDATE slots SET status = 'booked' WHERE id = $1", one)  # the plan is made here
        started = time.perf_counter()
        flipped = await conn.execute(
            "UPDATE slots SET status = 'returned' WHERE session_id = $1 AND status = 'reserved'", session_id
        )
        elapsed = time.perf_counter() - started
        assert flipped.startswith("UPDATE ") and int(flipped.split()[1]) >= 5999
        assert elapsed < 10, f"{elapsed:.1f} s"
        counted = await conn.fetchrow(
            "SELECT sum(public) AS public, sum(reserved) AS reserved, sum(booked) AS booked, "
            "sum(returned) AS returned FROM availability_counts WHERE session_id = $1",
            session_id,
        )
        actual = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'public') AS public, "
            "count(*) FILTER (WHERE status = 'reserved') AS reserved, "
            "count(*) FILTER (WHERE status = 'booked') AS booked, "
            "count(*) FILTER (WHERE status = 'returned') AS returned FROM slots WHERE session_id = $1",
            session_id,
        )
        assert dict(counted) == dict(actual)
    finally:
        await conn.close()
    assert result["result"] == "created"
