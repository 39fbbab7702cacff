"""Request bodies over the limit are refused with 413 before anything parses them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import date

import httpx
import pytest

from service.kit.config import Settings
from tests.factories import session_item

LIMIT = 64 * 1024
DAY = date(2026, 3, 10)


@pytest.fixture
def settings() -> Settings:
    return Settings(
        run_loops=False, log_json=False, lock_timeout_ms=5000, db_pool_size=20, max_body_bytes=LIMIT
    )


def push_body(size: int) -> bytes:
    """A well-formed push padded with whitespace to ``size`` bytes."""
    body = json.dumps({"sessions": [session_item("S1", DAY, slots=2)]}).encode()
    return body + b" " * (size - len(body))


async def chunks(body: bytes, size: int = 8 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def assert_too_large(r: httpx.Response) -> None:
    assert r.status_code == 413, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "payload_too_large"
    assert r.json()["limit_bytes"] == LIMIT
    assert r.headers["X-Request-ID"]


async def test_a_declared_length_over_the_limit_is_refused_unread(client, world):
    r = await client.post(
        "/v1/hospital/sessions",
        content=push_body(LIMIT + 1),
        headers={**world.auth("city_hospital"), "Content-Type": "application/json"},
    )
    assert_too_large(r)


async def test_an_unauthenticated_oversized_body_is_refused_before_authentication(client):
    r = await client.post("/v1/hospital/sessions", content=b"x" * (LIMIT + 1))
    assert_too_large(r)


async def test_a_body_at_the_limit_is_parsed(client, world):
    r = await client.post(
        "/v1/hospital/sessions",
        content=push_body(LIMIT),
        headers={**world.auth("city_hospital"), "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text


async def test_a_chunked_body_over_the_limit_is_refused_as_it_streams(live_server, world):
    async with httpx.AsyncClient(base_url=live_server, timeout=30) as http:
        r = await http.post(
            "/v1/hospital/sessions",
            content=chunks(push_body(LIMIT + 8 * 1024)),
            headers={**world.auth("city_hospital"), "Content-Type": "application/json"},
        )
    assert "content-length" not in r.request.headers
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert_too_large(r)


async def test_a_chunked_body_under_the_limit_is_served(live_server, world):
    async with httpx.AsyncClient(base_url=live_server, timeout=30) as http:
        r = await http.post(
            "/v1/hospital/sessions",
            content=chunks(push_body(LIMIT - 1024)),
            headers={**world.auth("city_hospital"), "Content-Type": "application/json"},
        )
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["result"] == "created"
