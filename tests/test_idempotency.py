"""Idempotency-Key answers keep no secret, replay the same answer, and expire after 24 hours."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, text

from service.models.referrals import IdempotencyKey
from service.referrals.purge import purge_expired_answers
from tests.factories import booking, pool_slots, post_referral, push, session_item, sign

DAY = date(2026, 3, 10)  # pool open at the test's start (2 March 09:00), public 3 March 08:00
NEXT = date(2026, 3, 11)  # pool opens 3 March 08:00


@pytest.fixture
async def slots(client, world) -> dict[str, list[int]]:
    await push(client, world, [session_item("S1", DAY, slots=10), session_item("S2", NEXT, slots=10)])
    await sign(client, world, [1, 2])
    return {
        DAY.isoformat(): [s["slot_id"] for s in await pool_slots(client, world, service_date=DAY.isoformat())]
    }


async def stored_bodies(db) -> list[str]:
    """The raw text of every stored answer, as PostgreSQL holds it."""
    rows = await db.run(lambda s: s.scalars(text("SELECT response_body::text FROM idempotency_keys")))
    return list(rows)


async def test_no_verification_code_is_stored_in_an_idempotency_row(client, world, clock, slots, db):
    r = await post_referral(
        client, world, booking(slots[DAY.isoformat()][0], 1, clock=clock), **{"Idempotency-Key": "k-1"}
    )
    assert r.status_code == 201, r.text
    code = r.json()["verification_code"]
    assert code is not None and len(code) == 6
    [raw] = await stored_bodies(db)
    assert f'"{code}"' not in raw
    assert '"verification_code": null' in raw
    assert r.json()["reference"] in raw  # the row is the answer, minus the secret


async def test_a_replay_returns_the_same_answer_with_its_code(client, world, clock, slots):
    payload = booking(slots[DAY.isoformat()][0], 1, clock=clock)
    first = await post_referral(client, world, payload, **{"Idempotency-Key": "k-1"})
    again = await post_referral(client, world, payload, **{"Idempotency-Key": "k-1"})
    assert again.headers["idempotent-replayed"] == "true"
    assert again.status_code == first.status_code == 201
    assert again.json() == first.json()
    assert again.json()["verification_code"] == first.json()["verification_code"]


def bookings_counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("slotpool_bookings_total", {"outcome": outcome}) or 0.0


async def test_a_replay_is_counted_as_a_replay_not_as_a_booking(client, world, clock, slots):
    """slotpool_bookings_total{outcome="booked"} counts bookings made; an Idempotency-Key answered
    again from its stored answer made none."""
    booked, replayed = bookings_counted("booked"), bookings_counted("idempotent_replay")
    payload = booking(slots[DAY.isoformat()][0], 1, clock=clock)
    assert (await post_referral(client, world, payload, **{"Idempotency-Key": "k-1"})).status_code == 201
    assert (bookings_counted("booked"), bookings_counted("idempotent_replay")) == (booked + 1, replayed)
    for _ in range(2):
        again = await post_referral(client, world, payload, **{"Idempotency-Key": "k-1"})
        assert again.headers["idempotent-replayed"] == "true"
    assert (bookings_counted("booked"), bookings_counted("idempotent_replay")) == (booked + 1, replayed + 2)
    # Another booking without a key still counts as one.
    other = booking(slots[DAY.isoformat()][1], 2, clock=clock)
    assert (await post_referral(client, world, other)).status_code == 201
    assert bookings_counted("booked") == booked + 2


async def count_keys(db) -> int:
    return int(await db.run(lambda s: s.scalar(select(func.count()).select_from(IdempotencyKey))))


async def test_answers_are_purged_24_hours_after_by_the_clock(client, world, clock, slots, db):
    r = await post_referral(
        client, world, booking(slots[DAY.isoformat()][0], 1, clock=clock), **{"Idempotency-Key": "k-1"}
    )
    assert r.status_code == 201, r.text
    start = clock.now()
    clock.set(start + timedelta(hours=23, minutes=59))
    assert await purge_expired_answers(db, clock) == 0
    assert await count_keys(db) == 1
    clock.set(start + timedelta(hours=24))
    assert await purge_expired_answers(db, clock) == 1
    assert await count_keys(db) == 0


async def test_purge_works_in_batches_until_none_is_left(client, world, clock, slots, db):
    for n, slot_id in enumerate(slots[DAY.isoformat()][:2], start=1):
        r = await post_referral(
            client, world, booking(slot_id, n, clock=clock), **{"Idempotency-Key": f"k-{n}"}
        )
        assert r.status_code == 201, r.text
    clock.advance(timedelta(days=2))
    assert await purge_expired_answers(db, clock, batch_size=1) == 2
    assert await count_keys(db) == 0


async def test_after_the_window_the_key_names_a_new_request(client, world, clock, slots):
    first = await post_referral(
        client, world, booking(slots[DAY.isoformat()][0], 1, clock=clock), **{"Idempotency-Key": "k-1"}
    )
    assert first.status_code == 201, first.text
    clock.advance(timedelta(hours=23))  # the next day's pool has opened
    [next_slot, *_] = await pool_slots(client, world, service_date=NEXT.isoformat())
    other = booking(next_slot["slot_id"], 2, clock=clock)
    r = await post_referral(client, world, other, **{"Idempotency-Key": "k-1"})
    assert (r.status_code, r.json()["code"]) == (422, "idempotency_key_reused")
    # Not purged yet, but past its window: the stored answer no longer binds the key.
    clock.advance(timedelta(hours=1, minutes=1))
    r = await post_referral(client, world, other, **{"Idempotency-Key": "k-1"})
    assert r.status_code == 201, r.text
    assert "idempotent-replayed" not in r.headers
    assert r.json()["reference"] != first.json()["reference"]
    again = await post_referral(client, world, other, **{"Idempotency-Key": "k-1"})
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == r.json()
