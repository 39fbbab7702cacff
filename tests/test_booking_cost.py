"""A booking is one short transaction: few statements, and the slot's row lock taken last.

Contenders for one slot queue on its row lock, so everything the booking can decide
before the claim is decided before it, and the claim is followed only by the writes that
record it (docs/performance.md). The test reads the statements the app's engine executes
for one booking.
"""

from __future__ import annotations

from datetime import date, timedelta

from service.kit.clock import local_datetime
from tests.factories import booking, pool_slots, push, session_item, sign
from tests.test_referral_views import counting

DAY = date(2026, 3, 21)
# Authentication with its token, the lock timeout, the doctor, the slot's context, the
# resident, the locks, the standing, the claim, the referral, the event with its deliveries
# and wake-up, the audit entry; the driver's pre-ping may add one.
STATEMENT_BOUND = 13
# What may follow the claim: the writes that record the booking, nothing that reads or waits.
# (The event, its deliveries and the dispatchers' wake-up are one statement: ``emit``.)
AFTER_CLAIM = (
    "INSERT INTO referrals",
    "WITH emit_given AS (",
    "INSERT INTO audit_entries",
)


async def test_a_booking_claims_its_slot_last_and_costs_few_statements(client, app, world):
    world.clock.set(local_datetime(DAY - timedelta(days=8), 9))
    await push(client, world, [session_item("S-COST", DAY, slots=10)])
    await sign(client, world, [1])
    slots = await pool_slots(client, world)
    with counting(app) as statements:
        r = await client.post(
            "/v1/referrals",
            json=booking(slots[0]["slot_id"], 1, clock=world.clock),
            headers=world.auth("chc_a"),
        )
    assert r.status_code == 201, r.text
    assert not [s for s in statements if "FOR UPDATE" in s.upper()], "a booking reads without row locks"
    (claim,) = [i for i, s in enumerate(statements) if s.lstrip().startswith("UPDATE slots")]
    tail = [s.strip() for s in statements[claim + 1 :]]
    assert all(s.startswith(AFTER_CLAIM) for s in tail), tail
    assert len(statements) <= STATEMENT_BOUND, "\n".join(statements)
