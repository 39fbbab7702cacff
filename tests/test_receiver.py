"""contracts/receiver.py, the receiver a hospital engineer can run: it accepts what the dispatcher
sends and refuses tampered, stale and unsigned requests, and prints each event once."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from standardwebhooks.webhooks import Webhook

from service.outbox.dispatcher import Dispatcher
from service.outbox.signing import new_secret
from tests.test_webhooks import ALL_TYPES, drain, emit_returned, returned_data

RECEIVER = Path(__file__).resolve().parent.parent / "contracts" / "receiver.py"


class Running:
    def __init__(self, secrets: list[str]) -> None:
        args = [sys.executable, str(RECEIVER), "--port", "0"]
        for secret in secrets:
            args += ["--secret", secret]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        first = self.process.stderr.readline().strip()
        assert first.startswith("listening on "), first
        self.url = first.removeprefix("listening on ")

    def stop(self) -> list[dict[str, Any]]:
        self.process.terminate()
        out, _ = self.process.communicate(timeout=10)
        return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture
def secret() -> str:
    return new_secret()


@pytest.fixture
def running(secret: str) -> Iterator[Running]:
    r = Running([secret])
    yield r
    if r.process.poll() is None:
        r.stop()


def signed(secret: str, msg_id: str, body: str, at: datetime | None = None) -> dict[str, str]:
    at = at or datetime.now(UTC)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
    }


async def test_r19_receiver_accepts_the_dispatchers_requests_once_each(
    client, world, clock, crypto, db, settings
):
    hook_settings = settings.model_copy(update={"webhook_timeout_seconds": 2.0})
    # Register first (the secret is shown then), start the receiver with it, point the endpoint at it.
    r = await client.post(
        "/v1/webhooks/endpoints",
        json={"url": "http://127.0.0.1:9/placeholder", "event_types": ALL_TYPES},
        headers=world.auth("city_hospital"),
    )
    secret = r.json()["secret"]
    receiver = Running([secret])
    try:
        r = await client.patch(
            f"/v1/webhooks/endpoints/{r.json()['id']}",
            json={"url": receiver.url + "/slotpool"},
            headers=world.auth("city_hospital"),
        )
        assert r.status_code == 200, r.text
        clock.set(datetime.now(UTC))  # the receiver checks timestamps against its own clock
        events = await emit_returned(db, world, 3)
        async with Dispatcher(db, clock, crypto, hook_settings) as dispatcher:
            assert await drain(dispatcher) == 3
            # A replay of the first event (same webhook-id) is accepted and not printed again.
            await db.run(
                lambda s: s.execute(
                    text(
                        "UPDATE webhook_deliveries SET status = 'dead', delivered_at = NULL, dead_at = now() "
                        "WHERE event_id = :id"
                    ),
                    {"id": events[0].id},
                )
            )
            replay = await client.get("/v1/webhooks/deliveries", headers=world.auth("city_hospital"))
            [dead] = replay.json()["items"]
            post = await client.post(
                f"/v1/webhooks/deliveries/{dead['id']}/replay", headers=world.auth("city_hospital")
            )
            assert post.status_code == 202
            assert await drain(dispatcher) == 1
        async with db.sessionmaker() as session:
            statuses = (await session.execute(text("SELECT http_status FROM webhook_attempts"))).scalars()
            assert list(statuses) == [204, 204, 204, 204]
    finally:
        printed = receiver.stop()
    assert [p["webhook_id"] for p in printed] == [e.webhook_id for e in events]
    assert printed[0]["type"] == "slots.returned"
    assert printed[0]["data"] == returned_data(0)


async def test_r19_receiver_refuses_tampered_stale_and_unsigned_requests(secret, running):
    body = json.dumps({"type": "slots.returned", "timestamp": "2026-03-02T09:00:00+08:00", "data": {}})
    async with httpx.AsyncClient(base_url=running.url) as http:
        good = signed(secret, "evt_1", body)
        assert (await http.post("/", content=body, headers=good)).status_code == 204
        tampered = body.replace("slots.returned", "referral.booked")
        assert (await http.post("/", content=tampered, headers=good)).status_code == 401
        stale = signed(secret, "evt_2", body, at=datetime.fromtimestamp(time.time() - 600, tz=UTC))
        assert (await http.post("/", content=body, headers=stale)).status_code == 401
        other_secret = signed(new_secret(), "evt_3", body)
        assert (await http.post("/", content=body, headers=other_secret)).status_code == 401
        renamed = {**good, "webhook-id": "evt_4"}  # the signature covers the id
        assert (await http.post("/", content=body, headers=renamed)).status_code == 401
        unsigned = {"content-type": "application/json"}
        assert (await http.post("/", content=body, headers=unsigned)).status_code == 401
        assert (await http.post("/", content=body, headers=good)).status_code == 204  # duplicate
    await asyncio.sleep(0)
    printed = running.stop()
    assert [p["webhook_id"] for p in printed] == ["evt_1"]


async def test_r19_receiver_accepts_either_secret_during_a_rotation():
    old, new = new_secret(), new_secret()
    receiver = Running([new])
    body = '{"type":"slots.returned"}'
    try:
        async with httpx.AsyncClient(base_url=receiver.url) as http:
            both = signed(old, "evt_1", body)
            both["webhook-signature"] += " " + signed(new, "evt_1", body)["webhook-signature"]
            assert (await http.post("/", content=body, headers=both)).status_code == 204
            assert (await http.post("/", content=body, headers=signed(old, "evt_2", body))).status_code == 401
    finally:
        receiver.stop()
