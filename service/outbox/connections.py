"""One kept-alive HTTP connection pool per webhook endpoint.

An endpoint's deliveries go one after another, so each endpoint needs one connection,
kept open between its requests (no TCP or TLS handshake per event). Giving every
endpoint its own ``httpx.AsyncClient`` also means two hospitals whose names resolve to
the same address never share a connection whose certificate was checked for the other
name. The clients share one TLS context (loading the CA bundle once), and the least
recently used idle ones are closed beyond ``keep``.
"""

from __future__ import annotations

import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from service.kit.config import Settings

CONNECT_TIMEOUT = 5.0
# Below the idle timeout of common servers and proxies (Node.js 5 s, the shortest default; nginx
# 75 s), so a connection is not reused just as the receiver closes it.
KEEPALIVE_SECONDS = 4.0


def endpoint_client(
    settings: Settings,
    *,
    verify: ssl.SSLContext | bool = True,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """A client for one endpoint: explicit timeouts, no redirects, no proxies from the environment."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.webhook_timeout_seconds, connect=CONNECT_TIMEOUT),
        follow_redirects=False,
        trust_env=False,
        verify=verify,
        # One connection is all a strictly ordered queue uses; a second covers an address
        # that changed (the old connection idles out).
        limits=httpx.Limits(
            max_connections=2, max_keepalive_connections=1, keepalive_expiry=KEEPALIVE_SECONDS
        ),
        headers={"user-agent": "slotpool-webhooks/1"},
        transport=transport,
    )


class EndpointClients:
    """``httpx.AsyncClient`` per endpoint id: explicit timeouts, no redirects, no proxies from the environment."""

    def __init__(
        self,
        settings: Settings,
        *,
        keep: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.keep = keep if keep is not None else max(64, 4 * settings.webhook_concurrency)
        # Tests hand in a transport that checks what is sent; it is shared, as a transport is a pool.
        self.transport = transport
        self._tls = httpx.create_ssl_context() if transport is None else None
        self._clients: OrderedDict[int, httpx.AsyncClient] = OrderedDict()
        self._in_use: dict[int, int] = {}

    def _new(self) -> httpx.AsyncClient:
        return endpoint_client(
            self.settings, verify=self._tls if self._tls is not None else True, transport=self.transport
        )

    @asynccontextmanager
    async def client(self, endpoint_id: int) -> AsyncIterator[httpx.AsyncClient]:
        """The endpoint's client, kept for its next requests."""
        client = self._clients.get(endpoint_id)
        if client is None:
            client = self._clients[endpoint_id] = self._new()
        else:
            self._clients.move_to_end(endpoint_id)
        self._in_use[endpoint_id] = self._in_use.get(endpoint_id, 0) + 1
        try:
            yield client
        finally:
            left = self._in_use[endpoint_id] - 1
            if left:
                self._in_use[endpoint_id] = left
            else:
                del self._in_use[endpoint_id]
            await self._trim()

    async def _trim(self) -> None:
        idle = [i for i in self._clients if i not in self._in_use]
        for endpoint_id in idle[: max(0, len(self._clients) - self.keep)]:
            await self._clients.pop(endpoint_id).aclose()

    def __len__(self) -> int:
        return len(self._clients)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), OrderedDict()
        for client in clients:
            await client.aclose()
