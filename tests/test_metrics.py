"""The gauges read from the database: outbox backlog, its oldest pending age, dead letters, release lag.

Each is set by ``read_gauges`` (the job's one pass) from the rows a real flow leaves, and the
scrape serves what the last pass read without touching the database (docs/operations.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import date, datetime, timedelta

import asyncpg
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from service.jobs import GAUGES_STATEMENT_TIMEOUT_MS, read_gauges
from service.kit.db import Database
from service.kit.errors import DatabaseUnavailable
from service.outbox.dispatcher import BACKOFF, JITTER, MAX_ATTEMPTS, Dispatcher
from service.slots.release import release_due_slots
from tests.factories import push, session_item
from tests.test_webhooks import emit_returned, register
from tests.webhook_receiver import Receiver

DAY = date(2026, 3, 10)  # public release 3 March 08:00 (Beijing)
GAUGES = (
    "slotpool_outbox_backlog",
    "slotpool_outbox_oldest_pending_age_seconds",
    "slotpool_webhook_dead_letters",
    "slotpool_release_lag_seconds",
)


def gauges() -> dict[str, float | None]:
    return {name: REGISTRY.get_sample_value(name) for name in GAUGES}


def figures(backlog: float, age: float, dead: float, lag: float) -> dict[str, float]:
    return dict(zip(GAUGES, (backlog, age, dead, lag), strict=True))


@pytest.fixture
def receiver(clock):
    r = Receiver(clock)
    r.start()
    yield r
    r.stop()


async def test_outbox_gauges_follow_pending_dead_and_replayed_deliveries(
    client, world, clock, db, crypto, settings, receiver
):
    hook_settings = settings.model_copy(update={"webhook_timeout_seconds": 1.0})
    await register(client, world, receiver.url)
    await read_gauges(db, clock)
    assert gauges() == figures(0, 0, 0, 0)
    assert REGISTRY.get_sample_value("slotpool_gauges_read_timestamp_seconds") == clock.now().timestamp()

    [first] = await emit_returned(db, world, 1)
    clock.advance(timedelta(seconds=90))
    await emit_returned(db, world, 2)
    clock.advance(timedelta(seconds=60))
    await read_gauges(db, clock)
    assert gauges() == figures(3, 150, 0, 0)  # the oldest pending was written 150 s ago

    # The receiver fails: the head is retried on the schedule until it is dead, then the next
    # becomes the head and fails once.
    receiver.answer = 500
    async with Dispatcher(db, clock, crypto, hook_settings) as dispatcher:
        for attempt in range(MAX_ATTEMPTS):
            await dispatcher.run_pass()
            if attempt < len(BACKOFF):
                clock.advance(BACKOFF[attempt] * (1 + JITTER) + timedelta(seconds=1))
        await dispatcher.run_pass()
        await read_gauges(db, clock)
        second_written = clock.now() - (await head_created_at(db))
        assert gauges() == figures(2, second_written.total_seconds(), 1, 0)
        assert second_written > timedelta(days=3)  # stuck behind the dead letter's four days

        receiver.answer = 200
        clock.advance(BACKOFF[0] * (1 + JITTER) + timedelta(seconds=1))
        await dispatcher.run_pass()
        await read_gauges(db, clock)
        assert gauges() == figures(0, 0, 1, 0)

        # A replayed dead letter is pending again, as old as its event.
        r = await client.get("/v1/webhooks/deliveries", headers=world.auth("city_hospital"))
        [dead] = r.json()["items"]
        replayed = await client.post(
            f"/v1/webhooks/deliveries/{dead['id']}/replay", headers=world.auth("city_hospital")
        )
        assert replayed.status_code == 202
        await read_gauges(db, clock)
        age = (clock.now() - datetime.fromisoformat(dead["created_at"])).total_seconds()
        assert gauges() == figures(1, age, 0, 0)
        assert dead["webhook_id"] == first.webhook_id


async def head_created_at(db: Database) -> datetime:
    return await db.run(
        lambda s: s.scalar(
            text("SELECT created_at FROM webhook_deliveries WHERE status = 'pending' ORDER BY id LIMIT 1")
        )
    )


async def test_release_lag_is_how_long_the_oldest_due_slot_has_waited(client, world, clock, db):
    [pushed] = await push(client, world, [session_item("S1", DAY, slots=10)])
    public_at = datetime.fromisoformat(pushed["public_at"])
    clock.set(public_at - timedelta(seconds=1))
    await read_gauges(db, clock)
    assert gauges()["slotpool_release_lag_seconds"] == 0  # not due yet
    clock.set(public_at + timedelta(seconds=42))  # the release has not run since
    await read_gauges(db, clock)
    assert gauges()["slotpool_release_lag_seconds"] == 42
    assert await release_due_slots(db, clock) > 0
    await read_gauges(db, clock)
    assert gauges()["slotpool_release_lag_seconds"] == 0
    assert gauges()["slotpool_outbox_backlog"] == 0  # slots.returned written, but no endpoint to queue for


async def test_a_slow_database_leaves_the_last_reading_and_the_scrape_untouched(
    client, world, clock, db, owner_url
):
    await register(client, world, "http://127.0.0.1:9/away")
    await emit_returned(db, world, 2)
    await read_gauges(db, clock)
    before = gauges()
    assert before["slotpool_outbox_backlog"] == 2

    # Another transaction holds the endpoints: the reading waits at most its statement timeout.
    holder = await asyncpg.connect(owner_url)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("LOCK TABLE webhook_endpoints IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(DBAPIError, match=r"statement timeout"):
            await read_gauges(db, clock)
        assert time.monotonic() - started < GAUGES_STATEMENT_TIMEOUT_MS / 1000 + 2
        await tx.rollback()
    finally:
        await holder.close()
    assert gauges() == before
    # A scrape reads memory only: it answers with the last reading whatever the database does.
    scraped = generate_latest(REGISTRY).decode()
    assert "slotpool_outbox_backlog 2.0" in scraped

    gone = Database("postgresql://nobody@127.0.0.1:9/none", pool_size=1)
    try:
        with pytest.raises(DatabaseUnavailable):
            await read_gauges(gone, clock)
    finally:
        await gone.dispose()
    assert gauges() == before


_WRITER = """
import sys
from service.kit import metrics
metrics.OUTBOX_BACKLOG.set(float(sys.argv[1]))
"""


def test_under_several_workers_the_freshest_reading_is_served_not_a_sum(tmp_path):
    """``serve --workers N``: every worker reads the same figures; the scrape shows the most
    recent one written, not N copies added up (prometheus_client's "mostrecent" mode)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for value in ("5", "7"):
        subprocess.run([sys.executable, "-c", _WRITER, value], env=env, check=True, timeout=60)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    assert registry.get_sample_value("slotpool_outbox_backlog") == 7.0
