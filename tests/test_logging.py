"""Logs: one JSON access line per request, the request ID in every line, no personal data (R15)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import httpx
import pytest
import structlog
from sqlalchemy import select

from service.kit.logging import configure_logging
from service.models.registry import ApiClient
from tests.factories import booking, pool_slots, push, session_item, synthetic_id

DAY = date(2026, 3, 10)
PHONE = "13912345678"

LogLines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    """Every line the service logs during the test, rendered as in production (JSON) and parsed."""
    stream = io.StringIO()
    configure_logging("DEBUG", json=True, stream=stream)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield lines
    structlog.reset_defaults()


async def client_id_of(db: Any, name: str) -> int:
    async with db.sessionmaker() as session:
        value: int = await session.scalar(select(ApiClient.id).where(ApiClient.name == name))
        return value


async def test_r15_booking_cancelling_and_reading_log_no_personal_data(client, world, clock, db, log_lines):
    await push(client, world, [session_item("S1", DAY, slots=4)])
    row = {
        "contract_no": "C-P-A-1",
        "institution_code": "P-A",
        "family_doctor": {"code": "FD-1", "name": "李家庭", "title": "attending"},
        "resident": {"id_number": synthetic_id("340102", seq=1), "name": "张一", "phone": PHONE},
        "starts_on": "2025-01-01",
        "ends_on": "2026-12-31",
    }
    r = await client.post("/v1/contracts/sync", json={"contracts": [row]}, headers=world.auth("platform"))
    assert r.status_code == 200 and r.json()["rejected"] == 0, r.text
    [slot, *_] = await pool_slots(client, world)
    r = await client.post(
        "/v1/referrals",
        json=booking(slot["slot_id"], 1, clock=clock, name="张一"),
        headers=world.auth("chc_a"),
    )
    assert r.status_code == 201, r.text
    reference = r.json()["reference"]
    read = await client.get(f"/v1/referrals/{reference}", headers=world.auth("chc_a"))
    assert read.status_code == 200
    r = await client.post(
        f"/v1/referrals/{reference}/cancel", json={"reason": "患者改期"}, headers=world.auth("chc_a")
    )
    assert r.status_code == 200

    lines = log_lines()
    text = "\n".join(json.dumps(line, ensure_ascii=False) for line in lines)
    for personal in (synthetic_id("340102", seq=1), "张一", PHONE, "李家庭"):
        assert personal not in text
    assert reference not in text  # the access line names the route template, not the path
    [access] = [
        line
        for line in lines
        if line["event"] == "request" and line["request_id"] == read.headers["x-request-id"]
    ]
    assert access == {
        "event": "request",
        "level": "info",
        "timestamp": access["timestamp"],
        "method": "GET",
        "route": "/v1/referrals/{reference}",
        "status": 200,
        "duration_ms": access["duration_ms"],
        "client_id": await client_id_of(db, "chc_a"),
        "request_id": read.headers["x-request-id"],
    }
    assert isinstance(access["duration_ms"], float)
    requests = [line for line in lines if line["event"] == "request"]
    assert [(line["method"], line["route"]) for line in requests[-3:]] == [
        ("POST", "/v1/referrals"),
        ("GET", "/v1/referrals/{reference}"),
        ("POST", "/v1/referrals/{reference}/cancel"),
    ]
    assert all(line.get("request_id") for line in lines)


async def test_access_line_of_an_unauthenticated_and_an_unknown_request(client, log_lines):
    r = await client.get("/v1/referrals/R-NOPE", headers={"x-request-id": "trace-42"})
    assert r.status_code == 401 and r.headers["x-request-id"] == "trace-42"
    assert r.json()["request_id"] == "trace-42"
    r = await client.get("/no/such/path", headers={"x-request-id": "bad id with spaces"})
    assert r.status_code == 404 and r.headers["x-request-id"] != "bad id with spaces"
    first, second = (line for line in log_lines() if line["event"] == "request")
    assert (first["route"], first["status"], first["request_id"]) == (
        "/v1/referrals/{reference}",
        401,
        "trace-42",
    )
    assert "client_id" not in first
    assert (second["route"], second["status"]) == ("unmatched", 404)
    assert second["request_id"] == r.headers["x-request-id"]


async def test_a_500_is_logged_with_its_request_id_and_the_binding_ends_with_the_request(app, log_lines):
    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/test-only/boom", boom)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://slotpool.test") as c:
        r = await c.get("/test-only/boom")
    assert r.status_code == 500
    request_id = r.headers["x-request-id"]
    assert r.json()["request_id"] == request_id
    lines = log_lines()
    [error] = [line for line in lines if line["event"] == "unhandled error"]
    assert error["request_id"] == request_id and "RuntimeError: a bug" in error["exception"]
    assert error["route"] == "/test-only/boom" and "path" not in error
    [access] = [line for line in lines if line["event"] == "request"]
    assert (access["route"], access["status"], access["request_id"]) == ("/test-only/boom", 500, request_id)
    assert "request_id" not in structlog.contextvars.get_contextvars()
    assert "client_id" not in structlog.contextvars.get_contextvars()


async def test_a_500_leaves_the_callers_keep_alive_connection_open(app, live_server):
    """A bug answers 500 and is logged once; the HIS's pooled connection goes on serving."""

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/test-only/boom", boom)
    host, port = live_server.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        statuses = []
        for path in ("/test-only/boom", "/healthz"):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: slotpool.test\r\n\r\n".encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            lines = head.decode("latin-1").split("\r\n")
            statuses.append(int(lines[0].split()[1]))
            length = next(int(h.split(":")[1]) for h in lines if h.lower().startswith("content-length:"))
            await asyncio.wait_for(reader.readexactly(length), timeout=10)
            assert not any(h.lower() == "connection: close" for h in lines), head
    finally:
        writer.close()
    assert statuses == [500, 200]


async def test_a_database_bug_logs_its_statement_without_the_values_bound_to_it(app, log_lines):
    """A failing statement's traceback names the SQL, never its parameters (names, ID indexes)."""
    from sqlalchemy import text

    secret = "严洁静-绝密"  # in a variable: a traceback shows its frames' source lines

    async def bad_cast() -> None:
        state = app.state.slotpool
        await state.db.run(
            lambda s: s.execute(text("SELECT CAST(CAST(:v AS text) AS integer)"), {"v": secret})
        )

    app.add_api_route("/test-only/bad-cast", bad_cast)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://slotpool.test") as c:
        r = await c.get("/test-only/bad-cast")
    assert r.status_code == 500
    [error] = [line for line in log_lines() if line["event"] == "unhandled error"]
    assert "SELECT CAST" in error["exception"] and error["sqlstate"] == "22P02"
    assert "严洁静" not in json.dumps(error, ensure_ascii=False)
