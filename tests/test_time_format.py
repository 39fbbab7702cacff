"""One time format everywhere (docs/webhooks.md, "Time"): every instant slotpool writes in a /v1
body, a webhook payload or a FHIR resource is RFC 3339 in UTC with ``Z``, with six digits of
fraction when the value has a fraction and none otherwise. Dates stay ``YYYY-MM-DD``.

The test runs the flow that writes every event type, delivers the events and a test event to a
real receiver, provokes refusals that name instants, then reads every GET of the contract as
every role, and walks each answer: every string that holds a date and a time must be the format.
The test clock reads Beijing time, so a value that reaches an answer without going through the
one writer shows up with +08:00.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import httpx

from service.kit.clock import SHANGHAI
from service.models.events import EVENT_TYPES, INSTITUTION_EVENT_TYPES
from service.outbox.dispatcher import Dispatcher
from tests.factories import World
from tests.test_contracts import DAY, INSTANT, run_flow
from tests.test_webhooks import drain
from tests.webhook_receiver import Receiver

# Anything that starts like a date and a time, wherever it sits in a string (a detail text too).
DATETIME_LIKE = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2})?(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?")
ROLES = ("city_hospital", "chc_a", "platform", "hotline", "commission")


def instants_in(node: Any, where: str = "$") -> list[tuple[str, str]]:
    """(path, text) of every date-and-time text in a JSON value."""
    if isinstance(node, dict):
        return [found for key, value in node.items() for found in instants_in(value, f"{where}.{key}")]
    if isinstance(node, list):
        return [found for i, value in enumerate(node) for found in instants_in(value, f"{where}[{i}]")]
    if isinstance(node, str):
        return [(where, m.group(0)) for m in DATETIME_LIKE.finditer(node)]
    return []


def test_the_walk_finds_every_other_format():
    """The walker itself: it finds offsets, spaces and missing zones, and passes the format."""
    body = {
        "a": "2026-03-10T08:00:00+08:00",
        "b": ["2026-03-10T00:00:00+00:00", {"c": "try again after 2026-03-10 00:00:00"}],
        "d": "2026-03-10T00:00:00",
        "ok": ["2026-03-10T00:00:00Z", "2026-03-10T00:00:00.250000Z", "2026-03-10", "3月10日08:00"],
    }
    found = instants_in(body)
    assert [path for path, text in found if not INSTANT.fullmatch(text)] == [
        "$.a",
        "$.b[0]",
        "$.b[1].c",
        "$.d",
    ]
    assert len(found) == 6


class Answers:
    """Every JSON answer the client received, by request."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, Any]] = []

    async def hook(self, response: httpx.Response) -> None:
        await response.aread()
        kind = response.headers.get("content-type", "")
        name = f"{response.request.method} {response.request.url.path} {response.status_code}"
        if "ndjson" in kind:
            self.bodies += [(name, json.loads(line)) for line in response.text.splitlines() if line]
        elif "json" in kind:
            self.bodies.append((name, response.json()))


async def _get_everything(client: httpx.AsyncClient, world: World, app: Any, known: dict[str, str]) -> int:
    """Every GET of the contract as every role, with the path parameters ``known`` fills in."""
    queries = {
        "/v1/availability": {
            "region": "340100",
            "from": DAY.isoformat(),
            "to": (DAY + timedelta(days=6)).isoformat(),
        },
        "/v1/reports/compliance": {"from": DAY.isoformat(), "to": DAY.isoformat()},
        "/v1/webhooks/deliveries": {"status": "delivered"},
    }
    answered = 0
    for path, item in app.openapi()["paths"].items():
        if "get" not in item or path.endswith(".pdf"):
            continue
        names = re.findall(r"{(\w+)}", path)
        if any(n not in known for n in names):
            continue
        url = path
        for n in names:
            url = url.replace("{" + n + "}", known[n])
        for who in ROLES:
            r = await client.get(url, params=queries.get(path), headers=world.auth(who))
            answered += r.status_code == 200
    return answered


async def test_every_instant_in_v1_webhooks_and_fhir_is_utc_with_z(
    client, world, clock, db, crypto, settings, app
):
    answers = Answers()
    client.event_hooks["response"].append(answers.hook)
    receiver = Receiver(clock)
    receiver.start()
    try:
        hospital = world.auth("city_hospital")
        r = await client.post(
            "/v1/webhooks/endpoints",
            json={"url": receiver.url, "event_types": list(EVENT_TYPES)},
            headers=hospital,
        )
        endpoint_id = r.json()["id"]
        # The booker institution's own endpoint: its events are walked as well.
        centre = world.auth("chc_a")
        r = await client.post(
            "/v1/webhooks/endpoints",
            json={"url": receiver.url + "/institution", "event_types": list(INSTITUTION_EVENT_TYPES)},
            headers=centre,
        )
        institution_endpoint_id = r.json()["id"]
        flow = await run_flow(client, world, clock, db)
        clock.set(clock.now().astimezone(SHANGHAI))  # the flow moved it in UTC: read in Beijing time again
        await client.post(f"/v1/webhooks/endpoints/{endpoint_id}/rotate-secret", headers=hospital)
        await client.post(f"/v1/webhooks/endpoints/{endpoint_id}/test", headers=hospital)
        await client.post(
            f"/v1/webhooks/endpoints/{endpoint_id}/test", headers=hospital
        )  # 429, with its wait
        await client.post(f"/v1/webhooks/endpoints/{institution_endpoint_id}/test", headers=centre)
        async with Dispatcher(db, clock, crypto, settings) as dispatcher:
            assert await drain(dispatcher) >= 6
        # Refusals that name instants: a cancellation past its cut-off, a booking out of its window.
        await client.post(
            f"/v1/referrals/{flow['kept']}/cancel", json={"reason": "late"}, headers=world.auth("chc_a")
        )

        fhir = {}
        for resource in ("Location", "Schedule", "Slot", "Appointment"):
            bundle = (await client.get(f"/fhir/{resource}", headers=world.auth("commission"))).json()
            if bundle.get("entry"):
                fhir[resource] = bundle["entry"][0]["resource"]["id"]
        known = {
            "reference": flow["kept"],
            "endpoint_id": str(endpoint_id),
            "region_code": "340100",
            "location_id": fhir.get("Location", "-"),
            "schedule_id": fhir.get("Schedule", "-"),
            "slot_id": fhir.get("Slot", "-"),
            "resource_type": "Slot",
        }
        answered = await _get_everything(client, world, app, known)
        assert answered >= 30, answered
    finally:
        receiver.stop()

    bodies = answers.bodies + [(f"webhook {r.webhook_id}", json.loads(r.body)) for r in receiver.requests]
    found = [(name, path, text) for name, body in bodies for path, text in instants_in(body)]
    wrong = [f"{name} {path}: {text}" for name, path, text in found if not INSTANT.fullmatch(text)]
    assert not wrong, "instants not in the one format:\n" + "\n".join(sorted(set(wrong)))
    # The walk saw enough to mean something: instants from each of the three surfaces.
    assert any(name.startswith("webhook") for name, _, _ in found)
    institution = [r for r in receiver.requests if r.path == "/institution"]
    assert {json.loads(r.body)["type"] for r in institution} >= {
        "referral.cancelled",
        "referral.attendance_recorded",
        "webhook.test",
    }
    assert any(" /fhir/" in name for name, _, _ in found)
    assert sum(" /v1/" in name for name, _, _ in found) >= 50
