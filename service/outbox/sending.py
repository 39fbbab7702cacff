"""One signed webhook request, as the dispatcher sends a delivery and as a test event is sent.

The address is checked before every request and the request connects to the address just
checked (DNS rebinding cannot steer it inside); the Host header and TLS SNI keep the
registered name, so the certificate is verified against it. Standard Webhooks headers, signed
with every secret in force. Never raises for what the network or the receiver does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from service.kit.clock import Clock
from service.kit.config import Settings
from service.kit.errors import Problem
from service.models.webhooks import EXCERPT_CHARS
from service.outbox.signing import signature_header
from service.outbox.urls import Resolver, resolve_target

# Answers that mean "the receiver is not there" rather than "the receiver refuses this event".
GATEWAY_DOWN = frozenset({502, 503, 504})
_READ_FOR_EXCERPT = 4096


@dataclass(frozen=True)
class Outcome:
    http_status: int | None
    error: str | None
    excerpt: str
    duration_ms: int

    @property
    def delivered(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300

    @property
    def unreachable(self) -> bool:
        """No answer from the receiver itself: worth probing rather than waiting out the backoff."""
        if self.http_status is None:
            return self.error is not None and not self.error.startswith("webhook_url_")
        return self.http_status in GATEWAY_DOWN


async def send_signed(
    client: httpx.AsyncClient,
    *,
    url: str,
    secrets: Sequence[str],
    msg_id: str,
    body: bytes,
    settings: Settings,
    clock: Clock,
    resolver: Resolver,
) -> Outcome:
    """POST ``body`` to ``url`` with the ``webhook-id`` ``msg_id``, signed now with ``secrets``."""
    started = time.perf_counter()

    def done(status: int | None, error: str | None, excerpt: bytes = b"") -> Outcome:
        text = excerpt.decode("utf-8", errors="replace").replace("\x00", "")[:EXCERPT_CHARS]
        elapsed = round((time.perf_counter() - started) * 1000)
        return Outcome(
            http_status=status, error=error[:200] if error else None, excerpt=text, duration_ms=elapsed
        )

    try:
        target = await resolve_target(url, allow_loopback=settings.webhook_allow_loopback, resolver=resolver)
    except Problem as exc:
        return done(None, f"{exc.code}: {exc.detail}")
    extensions: dict[str, str] = {}
    timestamp = int(clock.now().timestamp())
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, msg_id=msg_id, timestamp=timestamp, body=body),
    }
    # Connect to the address just checked, not to whatever DNS answers next (rebinding);
    # Host and TLS SNI (and so certificate verification) keep the registered name.
    parts = urlsplit(url)
    address = f"[{target.address}]" if ":" in target.address else target.address
    netloc = f"{address}:{parts.port}" if parts.port else address
    connect_url = urlunsplit(parts._replace(netloc=netloc))
    headers["host"] = parts.netloc
    if parts.scheme == "https":
        extensions["sni_hostname"] = target.host
    try:
        async with asyncio.timeout(settings.webhook_timeout_seconds):
            async with client.stream(
                "POST", connect_url, content=body, headers=headers, extensions=extensions
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
