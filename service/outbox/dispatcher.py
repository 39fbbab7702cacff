"""The webhook dispatcher: delivers pending deliveries to hospitals' endpoints, signed and in order.

Per endpoint, deliveries go strictly one after another in id order: a request is
sent only once the one before it was answered with a 2xx, and a failure stops the
endpoint's queue (the later deliveries wait behind the failed one). Replicas share
the work by claiming endpoints with ``FOR UPDATE SKIP LOCKED`` and a lease (a
token and an expiry read from the injectable clock) that is committed before any
HTTP request, so no transaction stays open across the network. The claim takes a
batch of the endpoint's pending deliveries in one statement; they are sent over the
endpoint's own kept-alive connection, and the results are written in one
transaction that first checks the lease is still this dispatcher's and takes the
next batch. A replica that dies mid-batch leaves its lease to expire; another
replica then sends the unrecorded deliveries again (at least once; receivers
deduplicate on ``webhook-id``).

A receiver that does not answer at all (refused, reset, timed out) or whose gateway
answers 502/503/504 is probed: its queue's head is re-sent every ``PROBE_SECONDS``
between the retries of the backoff schedule, and the first probe answered with a
2xx resumes the whole queue. Failed probes are neither recorded nor counted as
attempts, so the schedule (and the dead letter after about four days) is the same
as without them.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import asyncpg
import httpx
import structlog
from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    SmallInteger,
    Text,
    TextualSelect,
    bindparam,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.kit.clock import Clock
from service.kit.config import Settings
from service.kit.context import Actor
from service.kit.crypto import Crypto
from service.kit.db import Database, asyncpg_url
from service.kit.errors import log_failure
from service.kit.metrics import LOOP_ERRORS, WEBHOOK_ATTEMPTS
from service.models.events import webhook_id
from service.models.registry import Organisation
from service.models.webhooks import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from service.outbox.connections import EndpointClients
from service.outbox.endpoints import signing_secrets
from service.outbox.events import CHANNEL
from service.outbox.sending import Outcome, send_signed
from service.outbox.urls import Resolver, system_resolver

log = structlog.get_logger("slotpool.webhooks")

# Standard Webhooks' recommended schedule, extended so that even with -20 % jitter on
# every step the retries span more than three days (sum 4 d 3 h 35 min, at least 3 d 7 h).
BACKOFF = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
    timedelta(hours=24),
    timedelta(hours=24),
    timedelta(hours=24),
)
MAX_ATTEMPTS = len(BACKOFF) + 1
JITTER = 0.2
# An unreachable receiver's head is re-sent this often (± JITTER) until it answers: the queue
# resumes at most about this long after the receiver is back (docs/webhooks.md, "Outages").
PROBE_SECONDS = 2.0
BATCH = 100  # deliveries of one endpoint taken in one statement, sent, then recorded in one transaction
DELIVERIES_PER_CLAIM = 1000  # then the endpoint goes back to the pool, so none holds a replica forever


def retry_delay(attempts: int, rng: random.Random) -> timedelta | None:
    """How long to wait after the ``attempts``-th failed attempt; None when it was the last."""
    if attempts >= MAX_ATTEMPTS:
        return None
    return BACKOFF[attempts - 1] * rng.uniform(1 - JITTER, 1 + JITTER)


def probe_slots(settings: Settings) -> int:
    """How many of a replica's ``webhook_concurrency`` slots probes may hold at once."""
    return max(1, settings.webhook_concurrency // 4)


def listen_dsn(database_url: str) -> str:
    """A plain libpq-style URL for the LISTEN connection (asyncpg itself, not SQLAlchemy)."""
    url = make_url(asyncpg_url(database_url)).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


@dataclass(frozen=True)
class Item:
    """One pending delivery, ready to send."""

    delivery_id: int
    event_id: int
    webhook_id: str
    body: bytes


@dataclass(frozen=True)
class Batch:
    """Deliveries of one endpoint to send in order, under a lease on the endpoint."""

    endpoint_id: int
    lease_token: uuid.UUID
    lease_until: datetime
    url: str
    secrets: list[str]
    items: list[Item]
    probe: bool  # the head re-sent early, to learn whether an unreachable receiver is back


@dataclass(frozen=True)
class Sent:
    item: Item
    at: datetime
    outcome: Outcome


# An endpoint's first ``:batch`` pending deliveries with their payloads, oldest first.
_QUEUE_ROWS = (
    "SELECT d.id, d.event_id, ev.public_id, d.next_attempt_at, ev.payload"
    " FROM webhook_deliveries d JOIN events ev ON ev.id = d.event_id"
    " WHERE d.endpoint_id = {endpoint} AND d.status = 'pending' ORDER BY d.id LIMIT :batch"
)
_QUEUE = text(_QUEUE_ROWS.format(endpoint=":endpoint_id")).columns(payload=JSONB)
_HEAD_DUE = (
    "(SELECT h.next_attempt_at FROM webhook_deliveries h"
    " WHERE h.endpoint_id = e.id AND h.status = 'pending' ORDER BY h.id LIMIT 1)"
)


def _claim(condition: str, order: str) -> TextualSelect:
    """Lease up to ``:limit`` free active endpoints meeting ``condition`` (``FOR UPDATE SKIP
    LOCKED``, so replicas never wait on each other) and return each one's first ``:batch``
    pending deliveries: one statement."""
    # The pick is a MATERIALIZED CTE, not an ``id IN (subquery)``: the planner may rescan a
    # subquery on the inner side of a join, and a rescanned ``LIMIT … SKIP LOCKED`` picks new
    # rows each time, so the UPDATE could lease more than ``:limit`` endpoints.
    return text(
        "WITH picked AS MATERIALIZED ("
        "  SELECT e.id FROM webhook_endpoints e"
        "  WHERE e.status = 'active' AND (e.lease_until IS NULL OR e.lease_until <= :now)"
        f"  AND {condition} ORDER BY {order}, e.id LIMIT :limit FOR UPDATE SKIP LOCKED"
        "), claimed AS ("
        " UPDATE webhook_endpoints w SET lease_token = :token, lease_until = :until FROM picked"
        " WHERE w.id = picked.id"
        " RETURNING w.id, w.url, w.secret_enc, w.previous_secret_enc, w.previous_secret_expires_at"
        ") SELECT c.id AS endpoint_id, c.url, c.secret_enc, c.previous_secret_enc,"
        " c.previous_secret_expires_at, q.id AS delivery_id, q.event_id, q.public_id, q.next_attempt_at,"
        " q.payload"
        f" FROM claimed c CROSS JOIN LATERAL ({_QUEUE_ROWS.format(endpoint='c.id')}) AS q"
        " ORDER BY c.id, q.id"
    ).columns(payload=JSONB)


# Endpoints whose queue head is due, the longest waiting first.
_CLAIM_DUE = _claim(f"{_HEAD_DUE} <= :now", _HEAD_DUE)
# Endpoints whose receiver was away and is due to be probed: their head, early.
_CLAIM_PROBES = _claim(f"e.probe_at <= :now AND {_HEAD_DUE} > :now", "e.probe_at")


# The deliveries answered with a 2xx: marked delivered (if still pending) with their attempts.
_DELIVERED = text(
    "WITH marked AS ("
    "  UPDATE webhook_deliveries SET status = 'delivered', delivered_at = :now, attempts = attempts + 1"
    "  WHERE id = ANY(:ids) AND status = 'pending' RETURNING id"
    ") INSERT INTO webhook_attempts"
    " (delivery_id, attempted_at, http_status, error, response_excerpt, duration_ms)"
    " SELECT a.id, a.at, a.status, NULL, a.excerpt, a.duration"
    " FROM unnest(:ids, :ats, :statuses, :excerpts, :durations) AS a(id, at, status, excerpt, duration)"
    " JOIN marked ON marked.id = a.id"
).bindparams(
    bindparam("ids", type_=ARRAY(BigInteger)),
    bindparam("ats", type_=ARRAY(DateTime(timezone=True))),
    bindparam("statuses", type_=ARRAY(SmallInteger)),
    bindparam("excerpts", type_=ARRAY(Text)),
    bindparam("durations", type_=ARRAY(Integer)),
)


class Dispatcher:
    """Claims endpoints with a batch of their queue, sends it in order, records every attempt."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        crypto: Crypto,
        settings: Settings,
        *,
        resolver: Resolver = system_resolver,
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.crypto = crypto
        self.settings = settings
        self.clients = EndpointClients(settings, transport=transport)
        self.resolver = resolver
        self.rng = rng or random.Random()
        self.lease = timedelta(seconds=2 * settings.webhook_timeout_seconds + 30)
        # A batch stops sending when less than this is left of its lease, and is recorded (which
        # extends the lease): a request never outlives the lease it was sent under.
        self.lease_margin = timedelta(seconds=settings.webhook_timeout_seconds + 10)
        self.probe_slots = probe_slots(settings)
        self.probe_times: list[datetime] = []  # a heap: when the probes this replica scheduled are due

    async def __aenter__(self) -> Dispatcher:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.clients.aclose()

    # --- transactions -------------------------------------------------------------------------

    def _items(self, rows: list[tuple[int, int, str | None, datetime, Any]], now: datetime) -> list[Item]:
        """One endpoint's pending deliveries from its head (delivery id, event id and public id, due,
        payload) as a batch: up to the first delivery behind the head that is not due (the head
        was replayed before one that backs off; that one goes when it is due)."""
        items: list[Item] = []
        for delivery_id, event_id, public_id, next_attempt_at, payload in rows:
            if items and next_attempt_at > now:
                break
            body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
            items.append(
                Item(
                    delivery_id=delivery_id,
                    event_id=event_id,
                    webhook_id=webhook_id(event_id, public_id),
                    body=body,
                )
            )
        return items

    async def _queue(self, session: AsyncSession, endpoint_id: int, now: datetime) -> list[Item]:
        rows = await session.execute(_QUEUE, {"endpoint_id": endpoint_id, "batch": BATCH})
        return self._items([tuple(r) for r in rows], now)

    async def _claim_in(self, session: AsyncSession, *, limit: int, probes: int) -> list[Batch]:
        now = self.clock.now()
        token = uuid.uuid4()
        until = now + self.lease
        claims = [(_CLAIM_DUE, limit, BATCH, False)]
        batches: list[Batch] = []
        if probes > 0:
            claims.append((_CLAIM_PROBES, probes, 1, True))
        for statement, wanted, batch_size, probe in claims:
            wanted = min(wanted, limit - len(batches))
            if wanted <= 0:
                break
            rows = await session.execute(
                statement, {"now": now, "token": token, "until": until, "limit": wanted, "batch": batch_size}
            )
            # Leased and batched in that one statement. Every endpoint it leases has a pending head
            # (the condition), read in the same snapshot while the endpoint row is locked, so none
            # is leased without a batch.
            queues: dict[int, tuple[Any, list[tuple[int, int, str | None, datetime, Any]]]] = {}
            for endpoint_id, url, secret, previous, expires, *delivery in rows:
                queues.setdefault(endpoint_id, ((url, secret, previous, expires), []))[1].append(
                    tuple(delivery)
                )
            for endpoint_id, ((url, secret, previous, expires), rows_) in queues.items():
                keys = WebhookEndpoint(
                    secret_enc=secret, previous_secret_enc=previous, previous_secret_expires_at=expires
                )
                batches.append(
                    Batch(
                        endpoint_id=endpoint_id,
                        lease_token=token,
                        lease_until=until,
                        url=url,
                        secrets=signing_secrets(crypto=self.crypto, endpoint=keys, now=now),
                        items=self._items(rows_, now),
                        probe=probe,
                    )
                )
        return batches

    async def claim(self, limit: int, probes: int = 0) -> list[Batch]:
        """Lease up to ``limit`` endpoints, at most ``probes`` of them to probe, with their batches."""
        return await self.db.run(partial(self._claim_in, limit=limit, probes=probes))

    async def _record_in(
        self, session: AsyncSession, *, batch: Batch, sent: list[Sent], more: bool
    ) -> Batch | None:
        now = self.clock.now()
        endpoint = await session.scalar(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.id == batch.endpoint_id, WebhookEndpoint.lease_token == batch.lease_token)
            .with_for_update()
        )
        if endpoint is None:
            # The lease expired and another replica took over, or the endpoint was deleted.
            log.warning("webhook lease lost; results dropped", endpoint_id=batch.endpoint_id, sent=len(sent))
            return None
        delivered = [s for s in sent if s.outcome.delivered]
        if delivered:
            # Marked delivered and their attempts written in one statement, however many.
            await session.execute(
                _DELIVERED,
                {
                    "now": now,
                    "ids": [s.item.delivery_id for s in delivered],
                    "ats": [s.at for s in delivered],
                    "statuses": [s.outcome.http_status for s in delivered],
                    "excerpts": [s.outcome.excerpt for s in delivered],
                    "durations": [s.outcome.duration_ms for s in delivered],
                },
            )
            if endpoint.probe_at is not None:
                log.info("webhook receiver answers again; queue resumed", endpoint_id=endpoint.id)
                endpoint.probe_at = None
        failed = sent[-1] if sent and not sent[-1].outcome.delivered else None
        if failed is not None:
            delivery = await session.get(WebhookDelivery, failed.item.delivery_id, with_for_update=True)
            if delivery is not None and delivery.status == "pending":
                if failed.outcome.unreachable and failed.at < delivery.next_attempt_at:
                    # A probe, early: the receiver is still away. Not an attempt of the schedule.
                    self._schedule_probe(endpoint, now)
                else:
                    session.add(
                        WebhookAttempt(
                            delivery_id=delivery.id,
                            attempted_at=failed.at,
                            http_status=failed.outcome.http_status,
                            error=failed.outcome.error,
                            response_excerpt=failed.outcome.excerpt,
                            duration_ms=failed.outcome.duration_ms,
                        )
                    )
                    delivery.attempts += 1
                    await self._failed(session, endpoint, delivery, failed.outcome, now)
        next_batch = None
        if more and failed is None and not batch.probe and endpoint.status == "active":
            queue = await self._queue(session, endpoint.id, now)
            if queue:
                next_batch = Batch(
                    endpoint_id=endpoint.id,
                    lease_token=batch.lease_token,
                    lease_until=now + self.lease,
                    url=endpoint.url,
                    secrets=signing_secrets(crypto=self.crypto, endpoint=endpoint, now=now),
                    items=queue,
                    probe=False,
                )
        if next_batch is None:
            endpoint.lease_token = None
            endpoint.lease_until = None
        else:
            endpoint.lease_until = next_batch.lease_until
        await session.flush()
        return next_batch

    async def _failed(
        self,
        session: AsyncSession,
        endpoint: WebhookEndpoint,
        delivery: WebhookDelivery,
        outcome: Outcome,
        now: datetime,
    ) -> None:
        """A counted attempt failed: disable on 410, otherwise back off (and probe) or dead-letter."""
        if outcome.http_status == 410:
            endpoint.status = "disabled"
            endpoint.disabled_reason = "The receiver answered 410 Gone."
            endpoint.updated_at = now
            endpoint.probe_at = None
            await record(
                session=session,
                actor=Actor.system("webhook_dispatcher", now=now),
                action="webhook.endpoint_disabled",
                hospital_id=await _hospital_or_none(session, endpoint.organisation_id),
                reason=endpoint.disabled_reason,
                detail={
                    "endpoint_id": endpoint.id,
                    "organisation_id": endpoint.organisation_id,
                    "delivery_id": delivery.id,
                },
            )
            return
        delay = retry_delay(delivery.attempts, self.rng)
        if delay is None:
            delivery.status = "dead"
            delivery.dead_at = now
            endpoint.probe_at = None
            return
        delivery.next_attempt_at = now + delay
        if outcome.unreachable:
            if endpoint.probe_at is None:
                log.info("webhook receiver unreachable; probing", endpoint_id=endpoint.id)
            self._schedule_probe(endpoint, now)
        else:
            endpoint.probe_at = None  # it answers: the backoff alone paces the retries

    def _schedule_probe(self, endpoint: WebhookEndpoint, now: datetime) -> None:
        at = now + timedelta(seconds=PROBE_SECONDS * self.rng.uniform(1 - JITTER, 1 + JITTER))
        endpoint.probe_at = at
        heapq.heappush(self.probe_times, at)

    # --- HTTP ---------------------------------------------------------------------------------

    async def send(self, client: httpx.AsyncClient, batch: Batch, item: Item) -> Outcome:
        """One signed POST of a delivery; never raises for what the network or the receiver does."""
        return await send_signed(
            client,
            url=batch.url,
            secrets=batch.secrets,
            msg_id=item.webhook_id,
            body=item.body,
            settings=self.settings,
            clock=self.clock,
            resolver=self.resolver,
        )

    # --- the work -----------------------------------------------------------------------------

    async def drain(self, batch: Batch) -> int:
        """Send an endpoint's due deliveries in order, batch after batch; returns the requests made."""
        requests = 0
        current: Batch | None = batch
        async with self.clients.client(batch.endpoint_id) as client:
            while current is not None:
                sent: list[Sent] = []
                for item in current.items:
                    at = self.clock.now()
                    if at >= current.lease_until - self.lease_margin:
                        break  # recorded now, which extends the lease, before the next request
                    outcome = await self.send(client, current, item)
                    sent.append(Sent(item=item, at=at, outcome=outcome))
                    WEBHOOK_ATTEMPTS.labels(
                        "delivered" if outcome.delivered else str(outcome.http_status or "error")
                    ).inc()
                    if not outcome.delivered:
                        break  # the queue stops at a failure: nothing overtakes it
                requests += len(sent)
                more = requests < DELIVERIES_PER_CLAIM
                current = await self.db.run(partial(self._record_in, batch=current, sent=sent, more=more))
        return requests

    async def _drain_logged(self, batch: Batch) -> int:
        try:
            return await self.drain(batch)
        except Exception as exc:
            # The lease expires on its own; the unrecorded deliveries are sent again then.
            LOOP_ERRORS.labels("webhooks").inc()
            log_failure(log, "webhook delivery failed", exc, endpoint_id=batch.endpoint_id)
            return 0

    async def run_pass(self) -> int:
        """Claim what is due and what is to be probed (up to the concurrency), drain it; returns requests."""
        batches = await self.claim(self.settings.webhook_concurrency, self.probe_slots)
        return sum(await asyncio.gather(*(self._drain_logged(b) for b in batches)))

    async def run(self, *, stop: asyncio.Event, listen_url: str | None) -> None:
        """Deliver until ``stop``: woken by NOTIFY on commit, with a periodic poll as the backstop."""
        wake = asyncio.Event()
        running: set[asyncio.Task[int]] = set()
        probing: set[asyncio.Task[int]] = set()
        listener: asyncpg.Connection | None = None
        # Probes are looked for on the first turn, at each poll, when a probe this replica
        # scheduled is due and when a probe slot frees; a NOTIFY (a new event) needs no probe query.
        look_for_probes = True

        def on_notify(*_: object) -> None:
            wake.set()

        try:
            while not stop.is_set():
                if listen_url is not None and (listener is None or listener.is_closed()):
                    try:
                        listener = await asyncpg.connect(listen_url)
                        await listener.add_listener(CHANNEL, on_notify)
                    except (OSError, asyncpg.PostgresError) as exc:
                        listener = None
                        log.warning("LISTEN unavailable; polling only", error=type(exc).__name__)
                wake.clear()
                now = self.clock.now()
                while self.probe_times and self.probe_times[0] <= now:
                    heapq.heappop(self.probe_times)  # due: this turn's claim takes it
                    look_for_probes = True
                free = self.settings.webhook_concurrency - len(running) - len(probing)
                if free > 0:
                    probes = self.probe_slots - len(probing) if look_for_probes else 0
                    look_for_probes = False
                    try:
                        batches = await self.claim(free, probes)
                    except Exception as exc:
                        LOOP_ERRORS.labels("webhooks").inc()
                        log_failure(log, "webhook claim failed; retrying next interval", exc)
                        batches = []
                    for batch in batches:
                        task = asyncio.create_task(self._drain_logged(batch))
                        tasks = probing if batch.probe else running
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    if len(batches) == free:
                        continue  # more may be due: claim again once a slot frees
                timeout = self.settings.webhook_poll_seconds
                if self.probe_times:
                    until = (self.probe_times[0] - self.clock.now()).total_seconds()
                    timeout = min(timeout, max(until, 0.01))
                waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
                probes_before = set(probing)
                done, _ = await asyncio.wait(
                    [*waiters, *running, *probing], timeout=timeout, return_when="FIRST_COMPLETED"
                )
                look_for_probes = look_for_probes or not done or bool(done & probes_before)
                for waiter in waiters:
                    waiter.cancel()
        finally:
            if running or probing:
                await asyncio.gather(*running, *probing, return_exceptions=True)
            if listener is not None and not listener.is_closed():
                await listener.close()


async def dispatch_loop(
    db: Database,
    clock: Clock,
    crypto: Crypto,
    settings: Settings,
    *,
    database_url: str,
    stop: asyncio.Event,
) -> None:
    """The dispatcher with its endpoints' HTTP clients, until ``stop`` is set."""
    async with Dispatcher(db, clock, crypto, settings) as dispatcher:
        await dispatcher.run(stop=stop, listen_url=listen_dsn(database_url))


async def _hospital_or_none(session: AsyncSession, organisation_id: int) -> int | None:
    """The audit entry's hospital for an endpoint's owner: itself if a hospital, else none (a
    primary institution's endpoint; its id is in the entry's detail)."""
    kind = await session.scalar(select(Organisation.kind).where(Organisation.id == organisation_id))
    return organisation_id if kind == "hospital" else None
