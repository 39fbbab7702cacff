"""The test event (``webhook.test``): a signed ping to one endpoint, sent while the caller waits.

Decision (docs/webhooks.md, "Testing an endpoint"): the ping does not go through the outbox.
Queued, it would wait behind the endpoint's head, which may be backing off for hours, and the
hospital would learn nothing until then; sent at once, the answer carries what the receiver
said (status, excerpt, error, duration), which is what a HIS engineer wiring a receiver needs.
It is signed with the same secrets, checked against the same address rules and sent by the
same code as a delivery (``sending.send_signed``), with a webhook-id of its own, and is neither
retried nor recorded as a delivery: the audit trail records it with its outcome.

Three steps, so no transaction is open while the receiver answers: ``claim_ping`` (the
endpoint, scoped to the caller's hospital, and the rate limit, in one short transaction),
``send_ping`` (the request, no connection held), ``record_ping`` (the audit entry).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.kit.clock import Clock
from service.kit.config import Settings
from service.kit.context import Actor
from service.kit.crypto import Crypto
from service.kit.errors import TooManyRequests
from service.models.events import TEST_EVENT_TYPE, new_public_id
from service.outbox.connections import endpoint_client
from service.outbox.endpoints import get_endpoint, signing_secrets
from service.outbox.events import envelope
from service.outbox.sending import Outcome, send_signed
from service.outbox.urls import Resolver, system_resolver

# One test event per endpoint per this interval: enough to fix a receiver and try again, too
# few for the endpoint to be used to make slotpool send requests on someone's behalf.
PING_INTERVAL = timedelta(seconds=10)


@dataclass(frozen=True)
class Ping:
    """A test event claimed for one endpoint, ready to send."""

    endpoint_id: int
    organisation_id: int
    for_institution: bool
    url: str
    secrets: list[str]
    webhook_id: str
    body: bytes
    at: datetime


async def claim_ping(
    session: AsyncSession,
    *,
    crypto: Crypto,
    organisation_id: int,
    for_institution: bool,
    endpoint_id: int,
    now: datetime,
    lock_timeout_ms: int,
) -> Ping:
    """The organisation's endpoint with its test event (in a primary institution's envelope
    version when ``for_institution``); another organisation's is 404, a second ask
    within ``PING_INTERVAL`` 429 ``rate_limited`` with Retry-After. A transaction of its own
    (``Database.run``), committed before the request is sent."""
    now = now.astimezone(UTC)  # as a unit's reading (Actor.now): it is shown as sent_at
    # As in a unit of work: a lock not granted in time (a dispatcher recording) is 409 busy.
    await session.execute(text(f"SET LOCAL lock_timeout = '{int(lock_timeout_ms)}ms'"))
    endpoint = await get_endpoint(
        session=session, organisation_id=organisation_id, endpoint_id=endpoint_id, lock=True
    )
    last = endpoint.test_sent_at
    if last is not None and now < last + PING_INTERVAL:
        wait = math.ceil((last + PING_INTERVAL - now).total_seconds())
        raise TooManyRequests(
            "rate_limited",
            f"One test event per endpoint every {int(PING_INTERVAL.total_seconds())} seconds.",
            retry_after=wait,
        )
    endpoint.test_sent_at = now
    data = {"endpoint_id": endpoint.id, "event_types": list(endpoint.event_types)}
    body = json.dumps(
        envelope(TEST_EVENT_TYPE, data, at=now, for_institution=for_institution),
        ensure_ascii=False,
        separators=(",", ":"),
    )
    await session.flush()
    return Ping(
        endpoint_id=endpoint.id,
        organisation_id=organisation_id,
        for_institution=for_institution,
        url=endpoint.url,
        secrets=signing_secrets(crypto=crypto, endpoint=endpoint, now=now),
        webhook_id=new_public_id(),
        body=body.encode(),
        at=now,
    )


async def send_ping(
    ping: Ping, *, settings: Settings, clock: Clock, resolver: Resolver = system_resolver
) -> Outcome:
    """Send the test event once, over a connection of its own; never raises for the receiver."""
    async with endpoint_client(settings) as client:
        return await send_signed(
            client,
            url=ping.url,
            secrets=ping.secrets,
            msg_id=ping.webhook_id,
            body=ping.body,
            settings=settings,
            clock=clock,
            resolver=resolver,
        )


async def record_ping(*, session: AsyncSession, actor: Actor, ping: Ping, outcome: Outcome) -> None:
    """The audit entry of a test event: which endpoint, its webhook-id, and what the receiver said."""
    await record(
        session=session,
        actor=actor,
        action="webhook.endpoint_tested",
        hospital_id=None if ping.for_institution else ping.organisation_id,
        detail={
            "endpoint_id": ping.endpoint_id,
            "webhook_id": ping.webhook_id,
            "http_status": outcome.http_status,
            "error": outcome.error,
            "duration_ms": outcome.duration_ms,
        },
    )
