"""Webhook delivery: signatures, retries, 410, dead letters and replay, ordering, replicas, SSRF, rotation.

Every request goes to a real HTTP receiver on loopback and is verified with the
independent ``standardwebhooks`` library. The dispatcher runs on the test's
ManualClock, so days of backoff take no time.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import func, select, text
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.kit.clock import ManualClock
from service.kit.config import Settings
from service.kit.crypto import Crypto
from service.kit.db import Database
from service.kit.errors import Unprocessable
from service.models.audit import AuditEntry
from service.models.events import EVENT_TYPES, Event
from service.models.webhooks import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from service.outbox.dispatcher import BACKOFF, JITTER, MAX_ATTEMPTS, PROBE_SECONDS, Dispatcher, listen_dsn
from service.outbox.events import EmittedEvent, emit
from service.outbox.ping import PING_INTERVAL
from service.outbox.signing import signature, signature_header
from service.outbox.urls import check_url
from tests.factories import World, booking, pool_slots, push, session_item, sign, synthetic_id
from tests.test_contracts import RESIDENTS, _validator, run_flow
from tests.webhook_receiver import Receiver, verify

ALL_TYPES = list(EVENT_TYPES)
PRODUCTION_KEY = "cHJvZHVjdGlvbi1rZXktZm9yLXRlc3RzLW9ubHktMzI="  # base64 of 32 bytes, not a dev key


@pytest.fixture
def receiver(clock: ManualClock) -> Iterator[Receiver]:
    r = Receiver(clock)
    r.start()
    yield r
    r.stop()


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_timeout_seconds": 1.0, "webhook_concurrency": 8})


@pytest.fixture
async def dispatcher(
    db: Database, clock: ManualClock, crypto: Crypto, hook_settings: Settings
) -> AsyncIterator[Dispatcher]:
    async with Dispatcher(db, clock, crypto, hook_settings, rng=random.Random(7)) as dispatcher:
        yield dispatcher


async def register(
    client: Any, world: World, url: str, types: list[str] | None = None, who: str = "city_hospital"
) -> dict[str, Any]:
    r = await client.post(
        "/v1/webhooks/endpoints",
        json={"url": url, "event_types": types or ALL_TYPES},
        headers=world.auth(who),
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def returned_data(i: int) -> dict[str, Any]:
    """A slots.returned body that its schema accepts."""
    return {
        "session": {"external_id": f"S-{i}", "service_date": "2026-03-10", "period": "morning"},
        "department": {"code": "CARD", "name": "心血管内科"},
        "public_at": "2026-03-03T00:00:00Z",
        "slots": [
            {
                "number": 1,
                "external_id": f"S-{i}-1",
                "starts_at": "2026-03-10T00:00:00Z",
                "ends_at": "2026-03-10T00:15:00Z",
            }
        ],
    }


async def emit_returned(
    db: Database, world: World, count: int, who: str = "city_hospital"
) -> list[EmittedEvent]:
    """``count`` events, one transaction each (like ``count`` separate changes), in order."""
    ids = []
    for i in range(count):
        event = await db.run(
            lambda s, i=i: emit(
                session=s,
                hospital_id=world.ids[who],
                event_type="slots.returned",
                data=returned_data(i),
                at=world.clock.now(),
            )
        )
        ids.append(event)
    return ids


async def drain(*dispatchers: Dispatcher) -> int:
    """Run passes (of every dispatcher at once) until none makes an attempt."""
    total = 0
    while True:
        made = sum(await asyncio.gather(*(d.run_pass() for d in dispatchers)))
        total += made
        if not made:
            return total


async def scalar(db: Database, query: Any) -> Any:
    async with db.sessionmaker() as session:
        return await session.scalar(query)


def wid(event: EmittedEvent | Event) -> str:
    """The webhook-id an event goes out with."""
    return event.webhook_id


# --- signing -----------------------------------------------------------------------------------


def test_r19_signer_reproduces_the_standard_webhooks_test_vector():
    """The vector published with the specification's reference libraries (test_sign_function)."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id, timestamp, body = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert signature(secret, msg_id=msg_id, timestamp=timestamp, body=body) == expected
    assert signature_header([secret], msg_id=msg_id, timestamp=timestamp, body=body) == expected
    # The independent implementation agrees, and a one-byte change breaks it.
    assert Webhook(secret).sign(msg_id, _utc(timestamp), body.decode()) == expected
    assert signature(secret, msg_id=msg_id, timestamp=timestamp + 1, body=body) != expected


def _utc(timestamp: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, tz=UTC)


# --- delivery ----------------------------------------------------------------------------------


async def test_r19_every_event_is_delivered_signed_schema_valid_and_without_id_numbers(
    client, world, clock, db, receiver, dispatcher
):
    endpoint = await register(client, world, receiver.url + "/his")
    await run_flow(client, world, clock, db)
    async with db.sessionmaker() as session:
        events = list(
            await session.scalars(
                select(Event).where(Event.recipient_id == Event.hospital_id).order_by(Event.id)
            )
        )
    assert {e.type for e in events} == set(EVENT_TYPES)

    assert await drain(dispatcher) == len(events)
    assert [r.webhook_id for r in receiver.requests] == [wid(e) for e in events]
    forbidden = {synthetic_id(region, seq=seq) for seq, region in RESIDENTS.items()}
    for request, event in zip(receiver.requests, events, strict=True):
        body = verify(request, endpoint["secret"])
        assert body == event.payload
        assert request.headers["content-type"] == "application/json"
        assert int(request.headers["webhook-timestamp"]) == int(clock.now().timestamp())
        assert list(_validator(body["type"]).iter_errors(body)) == []
        text_body = request.body.decode()
        assert not any(id_number in text_body for id_number in forbidden), text_body
        assert not any(id_number[:17] in text_body for id_number in forbidden), text_body
    with pytest.raises(WebhookVerificationError):
        verify(receiver.requests[0], "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=")
    delivered = await scalar(db, select(func.count()).where(WebhookDelivery.status == "delivered"))
    assert delivered == len(events)


async def test_r19_only_subscribed_types_and_only_events_after_registration(
    client, world, clock, db, receiver, dispatcher
):
    await emit_returned(db, world, 1)  # before any endpoint: nobody gets it
    await register(client, world, receiver.url + "/booked-only", types=["referral.booked"])
    await register(client, world, receiver.url + "/other-hospital", who="district_hospital")
    await emit_returned(db, world, 2)
    everything = await register(client, world, receiver.url + "/all")
    later = await emit_returned(db, world, 1)
    await drain(dispatcher)
    assert receiver.ids("/booked-only") == []
    assert receiver.ids("/other-hospital") == []
    assert receiver.ids("/all") == [wid(later[0])]
    verify(receiver.requests[0], everything["secret"])


async def test_r19_attendance_recorded_reaches_a_his_subscribed_to_it_alone(
    client, world, clock, db, receiver, dispatcher
):
    endpoint = await register(client, world, receiver.url + "/emr", types=["referral.attendance_recorded"])
    await push(client, world, [session_item("S1", date(2026, 3, 10), slots=10)])
    await sign(client, world, [1])
    [slot, *_] = await pool_slots(client, world)
    r = await client.post(
        "/v1/referrals", json=booking(slot["slot_id"], 1, clock=clock), headers=world.auth("chc_a")
    )
    assert r.status_code == 201, r.text
    reference = r.json()["reference"]
    clock.set(datetime.fromisoformat(r.json()["slot"]["ends_at"]) + timedelta(hours=1))
    r = await client.post(
        "/v1/hospital/attendance",
        json={"reports": [{"reference": reference, "outcome": "attended"}]},
        headers=world.auth("city_hospital"),
    )
    assert r.status_code == 200, r.text
    [event] = await db.run(
        lambda s: s.scalars(
            select(Event)
            .where(Event.recipient_id == Event.hospital_id)
            .where(Event.type == "referral.attendance_recorded")
            .order_by(Event.id)
        )
    )

    assert await drain(dispatcher) == 1  # the booking is not one of this endpoint's types
    [request] = receiver.requests
    assert (request.path, request.webhook_id) == ("/emr", wid(event))
    body = verify(request, endpoint["secret"])
    assert body == event.payload
    assert list(_validator("referral.attendance_recorded").iter_errors(body)) == []
    assert (body["data"]["referral"]["reference"], body["data"]["attendance"]["outcome"]) == (
        reference,
        "attended",
    )
    assert synthetic_id("340102", seq=1)[:17] not in request.body.decode()


async def test_r19_500s_are_retried_with_backoff_and_every_attempt_is_recorded(
    client, world, clock, db, receiver, dispatcher
):
    endpoint = await register(client, world, receiver.url)
    [event_id] = await emit_returned(db, world, 1)
    receiver.answer = 500
    assert await drain(dispatcher) == 1
    assert await drain(dispatcher) == 0  # backing off: nothing is due yet
    clock.advance(BACKOFF[0] * (1 + JITTER) + timedelta(seconds=1))
    assert await drain(dispatcher) == 1
    receiver.answer = 200
    clock.advance(BACKOFF[1] * (1 - JITTER) - timedelta(seconds=1))
    assert await drain(dispatcher) == 0  # the second retry is not due before 4 minutes
    clock.advance(BACKOFF[1] * 2 * JITTER + timedelta(seconds=2))
    assert await drain(dispatcher) == 1

    assert receiver.ids() == [wid(event_id)] * 3  # the same webhook-id on every retry
    for request in receiver.requests:
        assert verify(request, endpoint["secret"])["type"] == "slots.returned"
    r = await client.get(
        "/v1/webhooks/deliveries", params={"status": "delivered"}, headers=world.auth("city_hospital")
    )
    [delivery] = r.json()["items"]
    assert delivery["webhook_id"] == wid(event_id)
    assert [a["http_status"] for a in delivery["attempt_log"]] == [500, 500, 200]
    assert delivery["attempt_log"][0]["response_excerpt"] == "status 500 from the test receiver"
    assert delivery["attempts"] == 3 and delivery["delivered_at"] is not None


async def test_r19_timeouts_are_retried(client, world, clock, db, receiver, dispatcher):
    await register(client, world, receiver.url)
    await emit_returned(db, world, 1)
    receiver.answer = "stall"
    assert await drain(dispatcher) == 1  # gives up after webhook_timeout_seconds (1 s here)
    receiver.release.set()
    receiver.answer = 200
    clock.advance(BACKOFF[0] * (1 + JITTER) + timedelta(seconds=1))
    assert await drain(dispatcher) == 1
    async with db.sessionmaker() as session:
        attempts = list(await session.scalars(select(WebhookAttempt).order_by(WebhookAttempt.id)))
    assert [(a.http_status, a.error) for a in attempts] == [(None, "timeout"), (200, None)]
    assert 900 <= attempts[0].duration_ms < 5000


async def test_r19_410_disables_the_endpoint_until_it_is_re_enabled(
    client, world, clock, db, receiver, dispatcher
):
    endpoint = await register(client, world, receiver.url)
    first = await emit_returned(db, world, 1)
    receiver.answer = 410
    assert await drain(dispatcher) == 1
    hospital = world.auth("city_hospital")
    shown = (await client.get(f"/v1/webhooks/endpoints/{endpoint['id']}", headers=hospital)).json()
    assert shown["status"] == "disabled" and "410" in shown["disabled_reason"]
    later = await emit_returned(db, world, 2)  # queued behind, not sent
    clock.advance(timedelta(days=5))
    assert await drain(dispatcher) == 0
    disabled = await scalar(
        db, text("SELECT count(*) FROM audit_entries WHERE action = 'webhook.endpoint_disabled'")
    )
    assert disabled == 1

    receiver.answer = 200
    r = await client.patch(
        f"/v1/webhooks/endpoints/{endpoint['id']}", json={"status": "active"}, headers=hospital
    )
    assert r.status_code == 200 and r.json()["status"] == "active", r.text
    assert await drain(dispatcher) == 3
    assert receiver.ids() == [wid(first[0]), *(wid(i) for i in first + later)]


async def test_r19_dead_letter_after_three_days_of_retries_then_replay(
    client, world, clock, db, receiver, dispatcher
):
    endpoint = await register(client, world, receiver.url)
    [event_id] = await emit_returned(db, world, 1)
    behind = await emit_returned(db, world, 1)
    receiver.answer = 503
    started = clock.now()
    for _ in range(MAX_ATTEMPTS):
        await drain(dispatcher)
        clock.advance(timedelta(hours=30))  # longer than any backoff step with jitter
    # Only the head was tried until it died; then the queue moved on to the event behind it.
    assert receiver.ids() == [wid(event_id)] * MAX_ATTEMPTS + [wid(behind[0])]
    async with db.sessionmaker() as session:
        times = list(await session.scalars(select(WebhookAttempt.attempted_at).order_by(WebhookAttempt.id)))
    assert times[-1] - started >= timedelta(days=3)

    hospital = world.auth("city_hospital")
    r = await client.get("/v1/webhooks/deliveries", params={"status": "dead"}, headers=hospital)
    [dead] = r.json()["items"]
    assert dead["webhook_id"] == wid(event_id) and dead["attempts"] == MAX_ATTEMPTS
    assert [a["http_status"] for a in dead["attempt_log"]] == [503] * MAX_ATTEMPTS

    receiver.answer = 200
    assert await drain(dispatcher) == 1  # the event behind the dead letter, on its first retry
    assert receiver.ids()[-1] == wid(behind[0])
    r = await client.post(f"/v1/webhooks/deliveries/{dead['id']}/replay", headers=hospital)
    assert r.status_code == 202, r.text
    assert await drain(dispatcher) == 1
    assert receiver.ids()[-1] == wid(event_id)
    verify(receiver.requests[-1], endpoint["secret"])
    r = await client.get("/v1/webhooks/deliveries", params={"status": "dead"}, headers=hospital)
    assert r.json()["items"] == []
    r = await client.post(f"/v1/webhooks/deliveries/{dead['id']}/replay", headers=hospital)
    assert r.status_code == 409 and r.json()["code"] == "webhook_delivery_not_dead"
    replays = await scalar(
        db, text("SELECT count(*) FROM audit_entries WHERE action = 'webhook.delivery_replayed'")
    )
    assert replays == 1


async def test_r19_two_dispatchers_deliver_every_event_exactly_once(
    client, world, clock, crypto, db, clean_db, receiver, hook_settings
):
    paths = [f"/his-{n}" for n in range(4)]
    for path in paths:
        await register(client, world, receiver.url + path)
    events = await emit_returned(db, world, 40)
    other_db = Database(clean_db, pool_size=5)
    two_at_a_time = hook_settings.model_copy(update={"webhook_concurrency": 2})
    try:
        async with (
            Dispatcher(db, clock, crypto, two_at_a_time) as first,
            Dispatcher(other_db, clock, crypto, two_at_a_time) as second,
        ):
            # The first replica holds two endpoints (its leases committed) when the second
            # starts: the second may take only the other two, and both then send at once.
            held = await first.claim(2)
            assert len(held) == 2
            by_first, by_second = await asyncio.gather(
                asyncio.gather(*(first.drain(batch) for batch in held)), drain(second)
            )
            made = [sum(by_first) + await drain(first), by_second]
    finally:
        await other_db.dispose()
    assert made == [2 * len(events), 2 * len(events)], made
    for path in paths:
        assert receiver.ids(path) == [wid(e) for e in events], path  # each once, in order
    assert len(receiver.requests) == len(paths) * len(events)


async def test_r19_receiver_down_then_back_gets_everything_in_order(
    client, world, clock, db, receiver, dispatcher
):
    paths = ["/a", "/b"]
    for path in paths:
        await register(client, world, receiver.url + path)
    receiver.stop()
    events = await emit_returned(db, world, 30)
    for _ in range(5):  # five rounds of failures: connection refused
        await drain(dispatcher)
        clock.advance(timedelta(hours=3))
    refused = await scalar(db, select(func.count()).select_from(WebhookAttempt))
    assert refused == 2 * 5  # only each endpoint's head was tried
    receiver.start()
    clock.advance(timedelta(hours=12))
    assert await drain(dispatcher) == 2 * len(events)
    for path in paths:
        assert receiver.ids(path) == [wid(e) for e in events], path
    pending = await scalar(db, select(func.count()).where(WebhookDelivery.status != "delivered"))
    assert pending == 0


async def test_r19_notify_at_commit_wakes_the_dispatcher(
    client, world, db, clean_db, receiver, hook_settings, crypto
):
    await register(client, world, receiver.url)
    settings = hook_settings.model_copy(update={"webhook_poll_seconds": 60.0})
    from service.kit.clock import Clock

    stop = asyncio.Event()
    # The loop LISTENs, then claims once and gives the claim's connection back: from that
    # moment it is idle until woken, so an event emitted after it can only arrive by NOTIFY.
    idle = asyncio.Event()

    def on_checkin(*_: object) -> None:
        idle.set()

    pool = db.engine.sync_engine.pool
    sqlalchemy.event.listen(pool, "checkin", on_checkin)
    async with Dispatcher(db, Clock(), crypto, settings) as dispatcher:
        task = asyncio.create_task(dispatcher.run(stop=stop, listen_url=listen_dsn(clean_db)))
        try:
            await asyncio.wait_for(idle.wait(), timeout=10)
            sqlalchemy.event.remove(pool, "checkin", on_checkin)
            [event_id] = await emit_returned(db, world, 1)
            for _ in range(100):
                if receiver.requests:
                    break
                await asyncio.sleep(0.05)
            assert receiver.ids() == [wid(event_id)]  # well before the 60 s poll
        finally:
            stop.set()
            await task


# --- batches, kept-alive connections, outages ------------------------------------------------------


class Statements:
    """Counts the SQL statements the dispatcher's engine runs while active."""

    def __init__(self, db: Database) -> None:
        self.engine = db.engine.sync_engine
        self.count = 0

    def _seen(self, *_: object) -> None:
        self.count += 1

    def __enter__(self) -> Statements:
        sqlalchemy.event.listen(self.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *_: object) -> None:
        sqlalchemy.event.remove(self.engine, "before_cursor_execute", self._seen)


async def test_r19_a_queue_is_claimed_in_batches_and_sent_over_one_connection_per_endpoint(
    client, world, clock, db, receiver, dispatcher
):
    paths = ["/a", "/b"]  # the same origin: still one connection each, not shared
    for path in paths:
        await register(client, world, receiver.url + path)
    few = await emit_returned(db, world, 3)
    with Statements(db) as small:
        assert await drain(dispatcher) == 2 * len(few)
    many = await emit_returned(db, world, 60)
    with Statements(db) as large:
        assert await drain(dispatcher) == 2 * len(many)
    # Claiming, marking and recording take as many statements for 60 deliveries as for 3.
    assert large.count == small.count, (small.count, large.count)

    connections = {}
    for path in paths:
        assert receiver.ids(path) == [wid(e) for e in few + many], path
        used = {r.connection for r in receiver.requests if r.path == path}
        assert len(used) == 1, used  # kept alive from the first request to the last
        connections[path] = used.pop()
    assert connections["/a"] != connections["/b"]
    async with db.sessionmaker() as session:
        rows = (
            await session.execute(
                select(WebhookDelivery.status, WebhookDelivery.attempts, func.count(WebhookAttempt.id))
                .outerjoin(WebhookAttempt, WebhookAttempt.delivery_id == WebhookDelivery.id)
                .group_by(WebhookDelivery.id)
            )
        ).all()
    assert len(rows) == 2 * len(few + many)
    assert {tuple(r) for r in rows} == {("delivered", 1, 1)}


async def test_r19_a_failure_stops_the_queue_and_nothing_overtakes_it(
    client, world, clock, db, receiver, dispatcher
):
    await register(client, world, receiver.url)
    events = await emit_returned(db, world, 10)
    answers = iter([200, 200, 200, 500])
    receiver.on_request = lambda: setattr(receiver, "answer", next(answers, 200))
    assert await drain(dispatcher) == 4  # three delivered, the fourth failed: the batch stops there
    assert receiver.ids() == [wid(e) for e in events[:4]]
    clock.advance(BACKOFF[0] * (1 + JITTER) + timedelta(seconds=1))
    assert await drain(dispatcher) == 7
    assert receiver.ids() == [wid(e) for e in events[:4]] + [wid(e) for e in events[3:]]


async def test_r19_a_crash_between_sending_and_recording_sends_again_in_order(
    client, world, clock, db, receiver, dispatcher, monkeypatch
):
    await register(client, world, receiver.url)
    events = await emit_returned(db, world, 5)
    record = dispatcher._record_in

    async def crash(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(dispatcher, "_record_in", record)
        raise RuntimeError("the replica died before recording")

    monkeypatch.setattr(dispatcher, "_record_in", crash)
    await dispatcher.run_pass()
    assert receiver.ids() == [wid(e) for e in events]  # sent, but nothing recorded
    assert await drain(dispatcher) == 0  # the lease still holds the endpoint
    clock.advance(dispatcher.lease + timedelta(seconds=1))
    assert await drain(dispatcher) == len(events)
    assert receiver.ids() == [wid(e) for e in events] * 2  # at least once, and in order again
    assert await scalar(db, select(func.count()).select_from(WebhookAttempt)) == len(events)
    assert await scalar(db, select(func.count()).where(WebhookDelivery.status != "delivered")) == 0


async def test_r19_no_request_starts_without_enough_lease_left_to_finish(
    client, world, clock, db, receiver, dispatcher, monkeypatch
):
    """A slow receiver (10 s a request here) cannot outrun the lease: batches are cut and recorded."""
    await register(client, world, receiver.url)
    events = await emit_returned(db, world, 8)
    receiver.on_request = lambda: clock.advance(timedelta(seconds=10))
    send = dispatcher.send
    leases = []

    async def checked(http: Any, batch: Any, item: Any) -> Any:
        assert clock.now() + dispatcher.lease_margin <= batch.lease_until
        leases.append(batch.lease_until)
        return await send(http, batch, item)

    monkeypatch.setattr(dispatcher, "send", checked)
    assert await drain(dispatcher) == len(events)
    assert receiver.ids() == [wid(e) for e in events]
    assert len(set(leases)) > 1  # extended as it went
    assert await scalar(db, select(func.count()).where(WebhookDelivery.status != "delivered")) == 0


async def endpoint_row(db: Database) -> WebhookEndpoint:
    endpoint: WebhookEndpoint = await scalar(db, select(WebhookEndpoint))
    return endpoint


async def head_delivery(db: Database) -> WebhookDelivery:
    delivery: WebhookDelivery = await scalar(
        db, select(WebhookDelivery).where(WebhookDelivery.status == "pending").order_by(WebhookDelivery.id)
    )
    return delivery


async def test_r19_an_unreachable_receiver_is_probed_and_its_queue_resumes_when_it_is_back(
    client, world, clock, db, receiver, dispatcher
):
    await register(client, world, receiver.url + "/his")
    receiver.stop()
    events = await emit_returned(db, world, 20)
    assert await drain(dispatcher) == 1  # the head: connection refused
    clock.advance(BACKOFF[0] * (1 + JITTER) + timedelta(seconds=1))
    assert await drain(dispatcher) == 1  # the schedule's first retry: refused again
    head = await head_delivery(db)
    retry_at = head.next_attempt_at
    assert head.attempts == 2 and retry_at - clock.now() >= BACKOFF[1] * (1 - JITTER)

    # Between the schedule's retries the head is re-sent every PROBE_SECONDS (± jitter).
    for _ in range(3):
        probe_at = (await endpoint_row(db)).probe_at
        assert probe_at is not None
        assert (
            PROBE_SECONDS * (1 - JITTER)
            <= (probe_at - clock.now()).total_seconds()
            <= PROBE_SECONDS * (1 + JITTER)
        )
        assert await drain(dispatcher) == 0  # not before its time
        clock.set(probe_at)
        assert await drain(dispatcher) == 1  # refused: the receiver is still away
    # A failed probe is not an attempt: not recorded, not counted, the schedule unchanged.
    assert await scalar(db, select(func.count()).select_from(WebhookAttempt)) == 2
    head = await head_delivery(db)
    assert (head.attempts, head.next_attempt_at) == (2, retry_at)

    receiver.start()
    back = clock.now()
    clock.set((await endpoint_row(db)).probe_at)
    assert await drain(dispatcher) == len(events)  # the probe, then the whole queue
    assert clock.now() - back <= timedelta(seconds=PROBE_SECONDS * (1 + JITTER))
    assert clock.now() < retry_at  # long before the schedule would have tried again
    assert receiver.ids("/his") == [wid(e) for e in events]
    assert (await endpoint_row(db)).probe_at is None
    async with db.sessionmaker() as session:
        attempts = list(await session.scalars(select(WebhookAttempt).order_by(WebhookAttempt.id)))
    assert [a.http_status for a in attempts] == [None, None] + [200] * len(events)
    assert attempts[0].error.startswith("ConnectError")


@pytest.mark.parametrize(("answer", "probed"), [(503, True), (502, True), (500, False), (401, False)])
async def test_r19_only_a_receiver_that_is_away_is_probed(
    client, world, clock, crypto, db, receiver, hook_settings, answer, probed
):
    """502/503/504 are a gateway whose receiver is away; any other answer paces by the schedule."""
    await register(client, world, receiver.url)
    await emit_returned(db, world, 1)
    receiver.answer = answer
    # A timeout is "away" too: give a loaded machine time to answer.
    patient = hook_settings.model_copy(update={"webhook_timeout_seconds": 15.0})
    async with Dispatcher(db, clock, crypto, patient, rng=random.Random(7)) as dispatcher:
        assert await drain(dispatcher) == 1
        assert ((await endpoint_row(db)).probe_at is not None) is probed
        clock.advance(timedelta(seconds=PROBE_SECONDS * (1 + JITTER)))
        assert await drain(dispatcher) == (1 if probed else 0)
    attempt = await scalar(db, select(WebhookAttempt))
    assert attempt.http_status == answer
    assert await scalar(db, select(func.count()).select_from(WebhookAttempt)) == 1


async def test_r19_the_running_dispatcher_resumes_within_the_probe_interval_of_the_return(
    client, world, db, clean_db, receiver, hook_settings, crypto
):
    """Real clock and the real loop, whose poll (60 s) is far away: only the probe timer wakes it."""
    from service.kit.clock import Clock

    await register(client, world, receiver.url)
    settings = hook_settings.model_copy(update={"webhook_poll_seconds": 60.0})
    receiver.stop()
    stop = asyncio.Event()
    async with Dispatcher(db, Clock(), crypto, settings) as dispatcher:
        task = asyncio.create_task(dispatcher.run(stop=stop, listen_url=listen_dsn(clean_db)))
        try:
            events = await emit_returned(db, world, 5)
            for _ in range(200):  # the head's first attempt, refused
                if await scalar(db, select(func.count()).select_from(WebhookAttempt)):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(PROBE_SECONDS * (1 + JITTER))  # at least one probe refused meanwhile
            receiver.start()
            back = asyncio.get_running_loop().time()
            for _ in range(round((PROBE_SECONDS * (1 + JITTER) + 3) / 0.05)):
                if len(receiver.ids()) == len(events):
                    break
                await asyncio.sleep(0.05)
            assert receiver.ids() == [wid(e) for e in events]
            assert asyncio.get_running_loop().time() - back <= PROBE_SECONDS * (1 + JITTER) + 3
        finally:
            stop.set()
            await task
    assert await scalar(db, select(func.count()).select_from(WebhookAttempt)) == 1 + len(events)


# --- URLs and SSRF -------------------------------------------------------------------------------


async def test_r19_registration_requires_https_except_to_loopback_when_allowed(client, world):
    hospital = world.auth("city_hospital")
    for url, code in [
        ("http://his.example.org/hook", "webhook_url_not_https"),
        ("ftp://his.example.org/hook", "webhook_url_invalid"),
        ("https://user:pass@his.example.org/hook", "webhook_url_invalid"),
        ("/relative", "webhook_url_invalid"),
    ]:
        r = await client.post(
            "/v1/webhooks/endpoints", json={"url": url, "event_types": ALL_TYPES}, headers=hospital
        )
        assert r.status_code == 422 and r.json()["code"] == code, (url, r.text)
    for url in ("http://127.0.0.1:8080/hook", "http://localhost/hook", "https://93.184.216.34/hook"):
        r = await client.post(
            "/v1/webhooks/endpoints", json={"url": url, "event_types": ALL_TYPES}, headers=hospital
        )
        assert r.status_code == 201, (url, r.text)
    assert (
        await scalar(
            world.db, text("SELECT count(*) FROM audit_entries WHERE action = 'webhook.endpoint_registered'")
        )
        == 3
    )


async def test_r19_a_url_is_resolved_for_a_hospital_only_and_with_no_connection_held(
    app, client, world, monkeypatch
):
    """DNS may be slow: the check runs after authentication and outside the request's transaction."""
    from service.outbox import urls

    pool = app.state.slotpool.db.engine.pool
    held: list[int] = []
    addresses = urls._addresses

    async def watched(host: str, port: int, resolver: Any) -> list[str]:
        held.append(pool.checkedout())
        return await addresses(host, port, resolver)

    monkeypatch.setattr(urls, "_addresses", watched)
    body = {"url": "http://localhost/hook", "event_types": ALL_TYPES}
    r = await client.post("/v1/webhooks/endpoints", json=body)
    assert r.status_code == 401
    r = await client.post("/v1/webhooks/endpoints", json=body, headers=world.auth("platform"))
    assert r.status_code == 403 and r.json()["code"] == "wrong_role"
    assert held == []
    hospital = world.auth("city_hospital")
    r = await client.post("/v1/webhooks/endpoints", json=body, headers=hospital)
    assert r.status_code == 201, r.text
    r = await client.patch(
        f"/v1/webhooks/endpoints/{r.json()['id']}", json={"url": "http://localhost/other"}, headers=hospital
    )
    assert r.status_code == 200 and r.json()["url"] == "http://localhost/other", r.text
    assert held == [0, 0]


def fake_dns(table: dict[str, list[str]]) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("no such host")
        return table[host]

    return resolve


DNS = fake_dns(
    {
        "his.example.org": ["93.184.216.34"],
        "metadata.example.org": ["169.254.169.254"],
        "aliyun-meta.example.org": ["100.100.100.200"],
        "intranet.example.org": ["10.1.2.3"],
        "mixed.example.org": ["93.184.216.34", "192.168.1.10"],
        "v6-local.example.org": ["fe80::1"],
        "mapped.example.org": ["::ffff:10.0.0.1"],
        "localhost": ["127.0.0.1"],
    }
)


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://127.0.0.1/hook", "webhook_url_not_https"),
        ("http://localhost/hook", "webhook_url_not_https"),
        ("https://127.0.0.1/hook", "webhook_url_refused"),
        ("https://localhost/hook", "webhook_url_refused"),
        ("https://10.0.0.8/hook", "webhook_url_refused"),
        ("https://172.16.5.4/hook", "webhook_url_refused"),
        ("https://192.168.0.1/hook", "webhook_url_refused"),
        ("https://169.254.169.254/latest/meta-data", "webhook_url_refused"),
        ("https://[fd00:ec2::254]/", "webhook_url_refused"),
        ("https://[::1]/hook", "webhook_url_refused"),
        ("https://metadata.example.org/hook", "webhook_url_refused"),
        ("https://aliyun-meta.example.org/hook", "webhook_url_refused"),
        ("https://intranet.example.org/hook", "webhook_url_refused"),
        ("https://mixed.example.org/hook", "webhook_url_refused"),
        ("https://v6-local.example.org/hook", "webhook_url_refused"),
        ("https://mapped.example.org/hook", "webhook_url_refused"),
        ("https://nowhere.example.org/hook", "webhook_url_unresolvable"),
    ],
)
async def test_r19_refuses_non_public_addresses(url, code):
    with pytest.raises(Unprocessable) as refused:
        await check_url(url, allow_loopback=False, resolver=DNS)
    assert refused.value.code == code


async def test_r19_accepts_public_https():
    assert await check_url("https://his.example.org:8443/hook", allow_loopback=False, resolver=DNS)
    assert await check_url("https://93.184.216.34/hook", allow_loopback=False, resolver=DNS)


async def test_r19_delivery_rechecks_the_address_dns_rebinding(world, clock, crypto, db, receiver, settings):
    """Registered while it resolved to a public address; at delivery it resolves inside: refused."""
    production = settings.model_copy(
        update={
            "env": "production",
            "data_key": PRODUCTION_KEY,
            "index_key": PRODUCTION_KEY,
            "webhook_allow_loopback": False,
        }
    )
    url = "https://his.example.org/hook"
    assert await check_url(url, allow_loopback=False, resolver=DNS)

    async def add(session: Any) -> None:
        from service.outbox.endpoints import SECRET_COLUMN
        from service.outbox.signing import new_secret

        now = clock.now()
        session.add(
            WebhookEndpoint(
                organisation_id=world.ids["city_hospital"], url=url, event_types=ALL_TYPES, status="active",
                secret_enc=crypto.encrypt(new_secret(), column=SECRET_COLUMN), created_at=now, updated_at=now,
            )
        )  # fmt: skip

    await db.run(add)
    await emit_returned(db, world, 1)
    rebound = fake_dns({"his.example.org": ["127.0.0.1"]})
    async with Dispatcher(db, clock, crypto, production, resolver=rebound) as dispatcher:
        assert await drain(dispatcher) == 1
    attempt = await scalar(db, select(WebhookAttempt))
    assert attempt.http_status is None and attempt.error.startswith("webhook_url_refused")
    assert receiver.requests == []


# --- secrets -------------------------------------------------------------------------------------


async def test_r19_rotation_signs_with_both_secrets_during_the_overlap_only(
    client, world, clock, db, receiver, dispatcher
):
    endpoint = await register(client, world, receiver.url)
    hospital = world.auth("city_hospital")
    r = await client.post(f"/v1/webhooks/endpoints/{endpoint['id']}/rotate-secret", headers=hospital)
    assert r.status_code == 200, r.text
    rotated = r.json()
    old, new = endpoint["secret"], rotated["secret"]
    assert old != new and rotated["previous_secret_expires_at"] is not None

    await emit_returned(db, world, 1)
    await drain(dispatcher)
    during = receiver.requests[-1]
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert verify(during, old) == verify(during, new)

    clock.advance(timedelta(hours=24, seconds=1))
    await emit_returned(db, world, 1)
    await drain(dispatcher)
    after = receiver.requests[-1]
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    verify(after, new)
    with pytest.raises(WebhookVerificationError):
        verify(after, old)
    rotations = await scalar(
        db, text("SELECT count(*) FROM audit_entries WHERE action = 'webhook.secret_rotated'")
    )
    assert rotations == 1


async def test_r19_secrets_are_shown_once_and_encrypted_at_rest(client, world, db, receiver):
    endpoint = await register(client, world, receiver.url)
    hospital = world.auth("city_hospital")
    shown = (await client.get(f"/v1/webhooks/endpoints/{endpoint['id']}", headers=hospital)).json()
    listed = (await client.get("/v1/webhooks/endpoints", headers=hospital)).json()["items"]
    assert "secret" not in shown and all("secret" not in e for e in listed)
    assert endpoint["secret"].startswith("whsec_")
    stored = await scalar(db, select(WebhookEndpoint.secret_enc))
    assert endpoint["secret"].encode() not in bytes(stored)
    assert endpoint["secret"].removeprefix("whsec_").encode() not in bytes(stored)


async def test_r19_hospitals_see_only_their_own_endpoints_and_deliveries(client, world, db, receiver):
    mine = await register(client, world, receiver.url)
    other = world.auth("district_hospital")
    base = f"/v1/webhooks/endpoints/{mine['id']}"
    assert (await client.get(base, headers=other)).status_code == 404
    assert (
        await client.patch(base, json={"event_types": ["slots.returned"]}, headers=other)
    ).status_code == 404
    assert (await client.post(base + "/rotate-secret", headers=other)).status_code == 404
    assert (await client.delete(base, headers=other)).status_code == 404
    assert (await client.get("/v1/webhooks/endpoints", headers=other)).json()["items"] == []
    # A primary institution has endpoints of its own now, never a hospital's.
    assert (await client.get("/v1/webhooks/endpoints", headers=world.auth("chc_a"))).json()["items"] == []
    assert (await client.get(base, headers=world.auth("chc_a"))).status_code == 404

    await emit_returned(db, world, 1)
    delivery_id = await scalar(db, select(WebhookDelivery.id))
    await db.run(lambda s: s.execute(text("UPDATE webhook_deliveries SET status = 'dead', dead_at = now()")))
    r = await client.post(f"/v1/webhooks/deliveries/{delivery_id}/replay", headers=other)
    assert r.status_code == 404 and r.json()["code"] == "webhook_delivery_not_found"
    assert (await client.get("/v1/webhooks/deliveries", headers=other)).json()["items"] == []
    mine_dead = (await client.get("/v1/webhooks/deliveries", headers=world.auth("city_hospital"))).json()
    assert [d["id"] for d in mine_dead["items"]] == [delivery_id]


async def test_r19_deleting_an_endpoint_drops_its_queue(client, world, db, receiver, dispatcher):
    endpoint = await register(client, world, receiver.url)
    await emit_returned(db, world, 2)
    hospital = world.auth("city_hospital")
    assert (
        await client.delete(f"/v1/webhooks/endpoints/{endpoint['id']}", headers=hospital)
    ).status_code == 204
    assert await drain(dispatcher) == 0
    assert await scalar(db, select(func.count()).select_from(WebhookDelivery)) == 0
    assert await scalar(db, select(func.count()).select_from(Event)) == 2


# --- event ids ---------------------------------------------------------------------------------

OPAQUE_ID = re.compile(r"^evt_[0-9a-f]{32}$")


async def test_r19_event_ids_are_opaque_unique_and_say_nothing_of_the_count(
    client, world, db, receiver, dispatcher
):
    await register(client, world, receiver.url)
    events = await emit_returned(db, world, 30)
    ids = [e.webhook_id for e in events]
    assert all(OPAQUE_ID.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    assert ids != sorted(ids)  # not in the order they were written (1 chance in 30! otherwise)
    await drain(dispatcher)
    assert receiver.ids() == ids
    r = await client.get(
        "/v1/webhooks/deliveries", params={"status": "delivered"}, headers=world.auth("city_hospital")
    )
    assert [d["webhook_id"] for d in r.json()["items"]] == ids
    # Stored with the event: the same id however often it is read or sent.
    stored = await db.run(
        lambda s: s.scalars(select(Event).where(Event.recipient_id == Event.hospital_id).order_by(Event.id))
    )
    assert [e.public_id for e in stored] == ids


async def test_r19_an_event_written_before_public_ids_keeps_the_id_it_went_out_with(
    client, world, clock, db, receiver, dispatcher
):
    """Revision 0021 leaves older events' public_id NULL: they were (or may have been) delivered
    as evt_<id>, and a retry or replay must carry that same id."""
    endpoint = await register(client, world, receiver.url)
    [old, new] = await emit_returned(db, world, 2)
    await db.run(
        lambda s: s.execute(text("UPDATE events SET public_id = NULL WHERE id = :id"), {"id": old.id})
    )
    receiver.answer = 500
    await drain(dispatcher)
    receiver.answer = 200
    clock.advance(BACKOFF[0] * (1 + JITTER) + timedelta(seconds=1))
    await drain(dispatcher)
    assert receiver.ids() == [f"evt_{old.id}", f"evt_{old.id}", new.webhook_id]
    for request in receiver.requests:
        verify(request, endpoint["secret"])
    r = await client.get(
        "/v1/webhooks/deliveries", params={"status": "delivered"}, headers=world.auth("city_hospital")
    )
    assert [d["webhook_id"] for d in r.json()["items"]] == [f"evt_{old.id}", new.webhook_id]


# --- the test event ------------------------------------------------------------------------------


async def ping(client: Any, world: World, endpoint_id: int, who: str = "city_hospital") -> Any:
    return await client.post(f"/v1/webhooks/endpoints/{endpoint_id}/test", headers=world.auth(who))


async def test_r19_a_test_event_is_signed_sent_at_once_and_answered_with_the_receivers_status(
    client, world, clock, db, receiver
):
    endpoint = await register(
        client, world, receiver.url + "/his", types=["slots.returned", "referral.booked"]
    )
    r = await ping(client, world, endpoint["id"])
    assert r.status_code == 200, r.text
    answer = r.json()
    [request] = receiver.requests
    assert request.path == "/his"
    body = verify(request, endpoint["secret"])  # standardwebhooks, with the endpoint's secret
    assert list(_validator("webhook.test").iter_errors(body)) == []
    assert body == {
        "type": "webhook.test",
        "version": 1,
        "timestamp": clock.now().astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "data": {"endpoint_id": endpoint["id"], "event_types": ["referral.booked", "slots.returned"]},
    }
    assert OPAQUE_ID.fullmatch(request.webhook_id)
    assert answer == {
        "webhook_id": request.webhook_id,
        "type": "webhook.test",
        "sent_at": body["timestamp"],
        "delivered": True,
        "http_status": 200,
        "error": None,
        "response_excerpt": "status 200 from the test receiver",
        "duration_ms": answer["duration_ms"],
    }
    # Not an event of the outbox: nothing queued, nothing for a dispatcher to send again.
    assert await scalar(db, select(func.count()).select_from(Event)) == 0
    assert await scalar(db, select(func.count()).select_from(WebhookDelivery)) == 0
    [entry] = await db.run(
        lambda s: s.scalars(select(AuditEntry).where(AuditEntry.action == "webhook.endpoint_tested"))
    )
    assert entry.hospital_id == world.ids["city_hospital"]
    assert entry.detail == {
        "endpoint_id": endpoint["id"],
        "webhook_id": request.webhook_id,
        "http_status": 200,
        "error": None,
        "duration_ms": answer["duration_ms"],
    }

    # A receiver that refuses: the answer says so, and each test event has an id of its own.
    receiver.answer = 401
    clock.advance(PING_INTERVAL)
    r = await ping(client, world, endpoint["id"])
    assert (r.status_code, r.json()["delivered"], r.json()["http_status"]) == (200, False, 401)
    assert r.json()["webhook_id"] != answer["webhook_id"] == receiver.ids()[0]
    # A receiver that is away: no status, the error instead.
    receiver.stop()
    clock.advance(PING_INTERVAL)
    r = await ping(client, world, endpoint["id"])
    assert (r.status_code, r.json()["http_status"]) == (200, None)
    assert r.json()["error"].startswith("ConnectError")
    assert await scalar(db, select(func.count()).where(AuditEntry.action == "webhook.endpoint_tested")) == 3


async def test_r19_a_test_event_goes_only_to_the_callers_own_endpoint(client, world, db, receiver):
    mine = await register(client, world, receiver.url)
    r = await ping(client, world, mine["id"], who="district_hospital")
    assert r.status_code == 404 and r.json()["code"] == "webhook_endpoint_not_found"
    assert (await ping(client, world, mine["id"], who="chc_a")).status_code == 404
    assert receiver.requests == []
    assert await scalar(db, select(func.count()).where(AuditEntry.action == "webhook.endpoint_tested")) == 0


async def test_r19_test_events_are_limited_per_endpoint(client, world, clock, db, receiver):
    first = await register(client, world, receiver.url + "/a")
    second = await register(client, world, receiver.url + "/b")
    assert (await ping(client, world, first["id"])).status_code == 200
    clock.advance(PING_INTERVAL - timedelta(seconds=3))
    r = await ping(client, world, first["id"])
    assert r.status_code == 429 and r.json()["code"] == "rate_limited"
    assert r.headers["retry-after"] == "3"
    assert (await ping(client, world, second["id"])).status_code == 200  # another endpoint's own limit
    clock.advance(timedelta(seconds=3))
    assert (await ping(client, world, first["id"])).status_code == 200
    assert [r.path for r in receiver.requests] == ["/a", "/b", "/a"]
    assert await scalar(db, select(func.count()).where(AuditEntry.action == "webhook.endpoint_tested")) == 3
