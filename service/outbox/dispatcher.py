"""The webhook dispatcher: delivers pending deliveries to hospitals' endpoints, signed and in order.

Per endpoint, deliveries go strictly one after another in id order: only the
oldest pending delivery of an endpoint is ever attempted, and while it backs
off the later ones wait. Replicas share the work by claiming endpoints with
``FOR UPDATE SKIP LOCKED`` and a lease (a token and an expiry read from the
injectable clock) that is committed before the HTTP request, so no
transaction stays open across the network. The result is written in a second
transaction that first checks the lease is still this dispatcher's. A
replica that dies mid-request leaves its lease to expire; another replica
then sends the same delivery again (at least once; receivers deduplicate on
``webhook-id``).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import structlog
from sqlalchemy import or_, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.kit.clock import Clock
from service.kit.config import Settings
from service.kit.context import Actor
from service.kit.crypto import Crypto
from service.kit.db import Database, asyncpg_url
from service.kit.errors import Problem, log_failure
from service.kit.metrics import LOOP_ERRORS, WEBHOOK_ATTEMPTS
from service.models.events import Event
from service.models.webhooks import EXCERPT_CHARS, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from service.outbox.endpoints import signing_secrets
from service.outbox.events import CHANNEL
from service.outbox.signing import signature_header, webhook_id
from service.outbox.urls import Resolver, resolve_target, system_resolver

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
CONNECT_TIMEOUT = 5.0
DELIVERIES_PER_CLAIM = 100  # then the endpoint goes back to the pool, so none holds a replica forever
_READ_FOR_EXCERPT = 4096


def retry_delay(attempts: int, rng: random.Random) -> timedelta | None:
    """How long to wait after the ``attempts``-th failed attempt; None when it was the last."""
    if attempts >= MAX_ATTEMPTS:
        return None
    return BACKOFF[attempts - 1] * rng.uniform(1 - JITTER, 1 + JITTER)


def http_client(settings: Settings) -> httpx.AsyncClient:
    """The dispatcher's client: explicit timeouts, no redirects, no proxies from the environment."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.webhook_timeout_seconds, connect=CONNECT_TIMEOUT),
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=settings.webhook_concurrency * 2),
        headers={"user-agent": "slotpool-webhooks/1"},
    )


def listen_dsn(database_url: str) -> str:
    """A plain libpq-style URL for the LISTEN connection (asyncpg itself, not SQLAlchemy)."""
    url = make_url(asyncpg_url(database_url)).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


@dataclass(frozen=True)
class Job:
    """One request to make, under a lease on its endpoint."""

    endpoint_id: int
    lease_token: uuid.UUID
    delivery_id: int
    event_id: int
    url: str
    body: bytes
    secrets: list[str]
    attempts: int  # before this one


@dataclass(frozen=True)
class Outcome:
    http_status: int | None
    error: str | None
    excerpt: str
    duration_ms: int

    @property
    def delivered(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300


class Dispatcher:
    """Claims endpoints, sends their queue heads, records every attempt."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        crypto: Crypto,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        resolver: Resolver = system_resolver,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.crypto = crypto
        self.settings = settings
        self.http = http
        self.resolver = resolver
        self.rng = rng or random.Random()
        self.lease = timedelta(seconds=2 * settings.webhook_timeout_seconds + 30)

    # --- transactions -------------------------------------------------------------------------

    async def _head_job(
        self, session: AsyncSession, endpoint: WebhookEndpoint, token: uuid.UUID, now: datetime
    ) -> Job | None:
        row = (
            await session.execute(
                select(WebhookDelivery, Event.payload)
                .join(Event, Event.id == WebhookDelivery.event_id)
                .where(WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status == "pending")
                .order_by(WebhookDelivery.id)
                .limit(1)
            )
        ).first()
        if row is None:
            return None
        delivery, payload = row
        if delivery.next_attempt_at > now:
            return None
        return Job(
            endpoint_id=endpoint.id,
            lease_token=token,
            delivery_id=delivery.id,
            event_id=delivery.event_id,
            url=endpoint.url,
            body=json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(),
            secrets=signing_secrets(crypto=self.crypto, endpoint=endpoint, now=now),
            attempts=delivery.attempts,
        )

    async def _claim_in(self, session: AsyncSession, *, limit: int) -> list[Job]:
        now = self.clock.now()
        head_due = (
            select(WebhookDelivery.next_attempt_at)
            .where(WebhookDelivery.endpoint_id == WebhookEndpoint.id, WebhookDelivery.status == "pending")
            .order_by(WebhookDelivery.id)
            .limit(1)
            .correlate(WebhookEndpoint)
            .scalar_subquery()
        )
        endpoints = list(
            await session.scalars(
                select(WebhookEndpoint)
                .where(
                    WebhookEndpoint.status == "active",
                    or_(WebhookEndpoint.lease_until.is_(None), WebhookEndpoint.lease_until <= now),
                    head_due <= now,
                )
                .order_by(head_due, WebhookEndpoint.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        jobs = []
        for endpoint in endpoints:
            token = uuid.uuid4()
            job = await self._head_job(session, endpoint, token, now)
            if job is None:
                continue
            endpoint.lease_token = token
            endpoint.lease_until = now + self.lease
            jobs.append(job)
        await session.flush()
        return jobs

    async def claim(self, limit: int) -> list[Job]:
        """Lease up to ``limit`` endpoints whose queue head is due, and commit the leases."""
        return await self.db.run(partial(self._claim_in, limit=limit))

    async def _record_in(
        self, session: AsyncSession, *, job: Job, outcome: Outcome, more: bool
    ) -> Job | None:
        now = self.clock.now()
        endpoint = await session.scalar(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.id == job.endpoint_id, WebhookEndpoint.lease_token == job.lease_token)
            .with_for_update()
        )
        if endpoint is None:
            # The lease expired and another replica took over, or the endpoint was deleted.
            log.warning("webhook lease lost; result dropped", endpoint_id=job.endpoint_id)
            return None
        delivery = await session.get(WebhookDelivery, job.delivery_id, with_for_update=True)
        if delivery is not None and delivery.status == "pending":
            session.add(
                WebhookAttempt(
                    delivery_id=delivery.id,
                    attempted_at=now,
                    http_status=outcome.http_status,
                    error=outcome.error,
                    response_excerpt=outcome.excerpt,
                    duration_ms=outcome.duration_ms,
                )
            )
            delivery.attempts += 1
            if outcome.delivered:
                delivery.status = "delivered"
                delivery.delivered_at = now
            elif outcome.http_status == 410:
                endpoint.status = "disabled"
                endpoint.disabled_reason = "The receiver answered 410 Gone."
                endpoint.updated_at = now
                await record(
                    session=session,
                    actor=Actor.system("webhook_dispatcher", now=now),
                    action="webhook.endpoint_disabled",
                    hospital_id=endpoint.hospital_id,
                    reason=endpoint.disabled_reason,
                    detail={"endpoint_id": endpoint.id, "delivery_id": delivery.id},
                )
            else:
                delay = retry_delay(delivery.attempts, self.rng)
                if delay is None:
                    delivery.status = "dead"
                    delivery.dead_at = now
                else:
                    delivery.next_attempt_at = now + delay
        next_job = None
        if more and endpoint.status == "active":
            next_job = await self._head_job(session, endpoint, job.lease_token, now)
        if next_job is None:
            endpoint.lease_token = None
            endpoint.lease_until = None
        else:
            endpoint.lease_until = now + self.lease
        await session.flush()
        return next_job

    # --- HTTP ---------------------------------------------------------------------------------

    async def send(self, job: Job) -> Outcome:
        """One signed POST; never raises for what the network or the receiver does."""
        started = time.perf_counter()

        def done(status: int | None, error: str | None, excerpt: bytes = b"") -> Outcome:
            text = excerpt.decode("utf-8", errors="replace").replace("\x00", "")[:EXCERPT_CHARS]
            elapsed = round((time.perf_counter() - started) * 1000)
            return Outcome(
                http_status=status, error=error[:200] if error else None, excerpt=text, duration_ms=elapsed
            )

        try:
            target = await resolve_target(
                job.url, allow_loopback=self.settings.webhook_allow_loopback, resolver=self.resolver
            )
        except Problem as exc:
            return done(None, f"{exc.code}: {exc.detail}")
        extensions: dict[str, str] = {}
        msg_id = webhook_id(job.event_id)
        timestamp = int(self.clock.now().timestamp())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(
                job.secrets, msg_id=msg_id, timestamp=timestamp, body=job.body
            ),
        }
        # Connect to the address just checked, not to whatever DNS answers next (rebinding);
        # Host and TLS SNI (and so certificate verification) keep the registered name.
        parts = urlsplit(job.url)
        address = f"[{target.address}]" if ":" in target.address else target.address
        netloc = f"{address}:{parts.port}" if parts.port else address
        url = urlunsplit(parts._replace(netloc=netloc))
        headers["host"] = parts.netloc
        if parts.scheme == "https":
            extensions["sni_hostname"] = target.host
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_seconds):
                async with self.http.stream(
                    "POST", url, content=job.body, headers=headers, extensions=extensions
                ) as response:
                    excerpt = b""
                    async for chunk in response.aiter_bytes():
                        excerpt += chunk
                        if len(excerpt) >= _READ_FOR_EXCERPT:
                            break
                    return done(response.status_code, None, excerpt)
        except (TimeoutError, httpx.TimeoutException):
            return done(None, "timeout")
        except httpx.HTTPError as exc:
            return done(None, f"{type(exc).__name__}: {exc}")

    # --- the work -----------------------------------------------------------------------------

    async def drain(self, job: Job) -> int:
        """Send an endpoint's due deliveries in order until its head is not due; returns attempts made."""
        attempts = 0
        current: Job | None = job
        while current is not None:
            outcome = await self.send(current)
            attempts += 1
            WEBHOOK_ATTEMPTS.labels(
                "delivered" if outcome.delivered else str(outcome.http_status or "error")
            ).inc()
            more = attempts < DELIVERIES_PER_CLAIM
            current = await self.db.run(partial(self._record_in, job=current, outcome=outcome, more=more))
        return attempts

    async def _drain_logged(self, job: Job) -> int:
        try:
            return await self.drain(job)
        except Exception as exc:
            # The lease expires on its own; the delivery is retried then.
            LOOP_ERRORS.labels("webhooks").inc()
            log_failure(log, "webhook delivery failed", exc, endpoint_id=job.endpoint_id)
            return 0

    async def run_pass(self) -> int:
        """Claim what is due (up to the concurrency) and drain it; returns the attempts made."""
        jobs = await self.claim(self.settings.webhook_concurrency)
        return sum(await asyncio.gather(*(self._drain_logged(job) for job in jobs)))

    async def run(self, *, stop: asyncio.Event, listen_url: str | None) -> None:
        """Deliver until ``stop``: woken by NOTIFY on commit, with a periodic poll as the backstop."""
        wake = asyncio.Event()
        running: set[asyncio.Task[int]] = set()
        listener: asyncpg.Connection | None = None

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
                free = self.settings.webhook_concurrency - len(running)
                if free > 0:
                    try:
                        jobs = await self.claim(free)
                    except Exception as exc:
                        LOOP_ERRORS.labels("webhooks").inc()
                        log_failure(log, "webhook claim failed; retrying next interval", exc)
                        jobs = []
                    for job in jobs:
                        task = asyncio.create_task(self._drain_logged(job))
                        running.add(task)
                        task.add_done_callback(running.discard)
                    if jobs and len(jobs) == free:
                        continue  # more may be due: claim again once a slot frees
                waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait()), *running]
                await asyncio.wait(
                    waiters, timeout=self.settings.webhook_poll_seconds, return_when="FIRST_COMPLETED"
                )
                for waiter in waiters[:2]:
                    waiter.cancel()
        finally:
            if running:
                await asyncio.gather(*running, return_exceptions=True)
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
    """The dispatcher with its own HTTP client, until ``stop`` is set."""
    async with http_client(settings) as http:
        await Dispatcher(db, clock, crypto, settings, http).run(
            stop=stop, listen_url=listen_dsn(database_url)
        )
