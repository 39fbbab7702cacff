"""The service answers as contracts/openapi.json says, found by schemathesis (docs/contract.md).

Every operation of the published document is called with requests schemathesis generates from
it (valid ones, and invalid ones for the negative pass), against the real app on a real HTTP
server and the suite's PostgreSQL, with a real API key of a role the operation admits. Each
answer is checked for: no server error, a documented status code, a documented content type,
a body that matches the documented schema, and, for a refusal, a ``code`` the response lists
in ``x-problem-codes``. The world holds pushed sessions, a signed resident and a booking, so
searches and lists answer with real items too.

Bounded: a fixed number of examples per operation, derandomized, so a run costs the same
every time (about half a minute) and a failure reproduces.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import date
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from service.kit.config import Settings
from tests.factories import booked_referral

DAY = date(2026, 3, 10)
# The key each role's operations are called with: the owner organisations of tests/factories.py.
ROLE_KEYS = {
    "hospital": "city_hospital",
    "primary": "chc_a",
    "platform": "platform",
    "hotline": "hotline",
    "commission": "commission",
    "any": "chc_a",
}
# A deeper run, e.g. before a release: SLOTPOOL_CONTRACT_EXAMPLES=50 (negative gets half).
POSITIVE_EXAMPLES = int(os.environ.get("SLOTPOOL_CONTRACT_EXAMPLES", "6"))
NEGATIVE_EXAMPLES = max(1, POSITIVE_EXAMPLES // 2)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def settings() -> Settings:
    # The run spends a few hundred tokens per key while the test clock stands still. A sandbox,
    # as the authorization matrix is: the one kind of server where every operation answers, the
    # sandbox clock's too (elsewhere it answers 404 sandbox_off before anything else).
    return Settings(
        run_loops=False,
        log_json=False,
        lock_timeout_ms=5000,
        db_pool_size=20,
        webhook_allow_loopback=True,
        rate_limit_burst=100_000,
        sandbox=True,
    )


def problem_code(response: requests.Response) -> str | None:
    """The stable code of a refusal: problem+json's ``code``, or an OperationOutcome's coding."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    if body.get("resourceType") == "OperationOutcome":
        codings = body["issue"][0].get("details", {}).get("coding", [])
        return str(codings[0]["code"]) if codings else None
    code = body.get("code")
    return str(code) if code is not None else None


def undocumented_code(doc: dict[str, Any], path: str, method: str, response: requests.Response) -> str | None:
    """What is wrong with a refusal's code, if anything."""
    if response.status_code < 400:
        return None
    documented = doc["paths"][path][method]["responses"].get(str(response.status_code), {})
    codes = documented.get("x-problem-codes", [])
    code = problem_code(response)
    if code not in codes:
        return f"{response.status_code} {code!r} is not among the documented {codes}"
    return None


def exercise(
    doc: dict[str, Any],
    operation: Any,
    mode: GenerationMode,
    examples: int,
    *,
    base_url: str,
    session: requests.Session,
    headers: dict[str, str],
) -> None:
    """Call one operation with ``examples`` generated requests; raise on the first failure."""
    method = operation.method.lower()

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def call(case: Any) -> None:
        sent = {**(case.headers or {}), **headers} if headers else case.headers
        response = case.call(base_url=base_url, session=session, headers=sent)
        case.validate_response(response, checks=CHECKS)
        wrong = undocumented_code(doc, operation.path, method, response)
        assert wrong is None, wrong

    call()


def fuzz(doc: dict[str, Any], base_url: str, keys: dict[str, str]) -> list[str]:
    """Run every operation; the failures, one line each (empty when the service conforms)."""
    schema = schemathesis.openapi.from_dict(doc)
    failures: list[str] = []
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        op = doc["paths"][operation.path][operation.method.lower()]
        role = (op.get("x-roles") or ["any"])[0]
        headers = {"Authorization": f"Bearer {keys[ROLE_KEYS[role]]}"} if op.get("security") else {}
        modes = [(GenerationMode.POSITIVE, POSITIVE_EXAMPLES)]
        if op.get("parameters") or op.get("requestBody"):  # nothing to get wrong otherwise
            modes.append((GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES))
        for mode, examples in modes:
            try:
                exercise(doc, operation, mode, examples, base_url=base_url, session=session, headers=headers)
            except (Exception, BaseExceptionGroup) as exc:
                first = " | ".join(str(exc).strip().splitlines()[:12])
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {first}")
    return failures


async def test_service_conforms_to_its_contract(app, client, live_server, world):
    # Something to find: a session with pool slots, a signed resident, a booking on it.
    await booked_referral(client, world, DAY, [1, 2])

    doc = json.loads(json.dumps(app.openapi()))
    failures = await asyncio.to_thread(fuzz, doc, live_server, dict(world.keys))
    assert not failures, f"{len(failures)} operations answer otherwise than documented:\n" + "\n".join(
        failures
    )
