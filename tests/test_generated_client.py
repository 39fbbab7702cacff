"""The contract drives tooling: a client generated from contracts/openapi.json books the demo referral.

openapi-python-client (a test dependency) generates the client into a temporary directory at
every run, from the committed contract and contracts/openapi-python-client.json; nothing
generated is committed, so the client can never lag the contract (docs/contract.md). The
generator must warn about nothing: a warning means part of the contract was left out of
the client. The demo region is seeded, served by a real HTTP server, and the family doctor's
booking of the README's demo is made through the generated functions and models alone.
"""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from service.app import create_app
from service.demo import booking_example, seed_demo
from service.kit.clock import SHANGHAI, Clock, local_date
from tests.test_demo import _install_presets

CONTRACTS = Path(__file__).resolve().parent.parent / "contracts"
PACKAGE = "slotpool_client"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The client package, generated from the committed contract and imported."""
    where = tmp_path_factory.mktemp("client")
    generator = Path(sys.executable).parent / "openapi-python-client"
    run = subprocess.run(
        [
            str(generator),
            "generate",
            "--path",
            str(CONTRACTS / "openapi.json"),
            "--output-path",
            str(where / PACKAGE),
            "--meta",
            "none",
            "--config",
            str(CONTRACTS / "openapi-python-client.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warning" not in (run.stdout + run.stderr).lower(), run.stdout + run.stderr
    sys.path.insert(0, str(where))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(where))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def test_every_operation_has_its_function(generated):
    """Readable names, one module per operationId, and the models the generator once dropped."""
    book = importlib.import_module(f"{PACKAGE}.api.referrals.book_referral")
    push = importlib.import_module(f"{PACKAGE}.api.slots.push_sessions")
    assert callable(book.asyncio_detailed) and callable(push.sync)
    models = importlib.import_module(f"{PACKAGE}.models")
    for name in ("ReferralOut", "BookableSlot", "BookableSlotList", "Problem", "AvailabilityWard"):
        assert hasattr(models, name), name


@pytest.fixture
async def demo_server(clean_db, settings) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """The seeded demo region behind a real HTTP server on loopback, with its keys (real clock)."""
    import uvicorn

    await _install_presets(clean_db)
    keys = await seed_demo(clean_db, settings)
    app = create_app(settings, database_url=clean_db, run_loops=False)
    async with app.router.lifespan_context(app):
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        )
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 (uvicorn exposes no start event)
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}", keys
        finally:
            server.should_exit = True
            await task


async def test_generated_client_books_the_demo_referral(generated, demo_server):
    url, keys = demo_server
    api = importlib.import_module(f"{PACKAGE}.api.referrals")
    search = importlib.import_module(f"{PACKAGE}.api.referrals.search_slots")
    book = importlib.import_module(f"{PACKAGE}.api.referrals.book_referral")
    read = importlib.import_module(f"{PACKAGE}.api.referrals.get_referral")
    models = importlib.import_module(f"{PACKAGE}.models")
    assert api is not None

    client: Any = generated.AuthenticatedClient(base_url=url, token=keys["primary"])
    async with client as c:
        found = await search.asyncio(client=c, limit=1)
        assert isinstance(found, models.BookableSlotList), found
        slot = found.items[0]
        assert isinstance(slot, models.BookableSlot)

        # The booking the README's demo prints, made of the generated models.
        now = Clock().now()
        example = booking_example(local_date(now))
        body = models.BookingIn(
            slot_id=slot.slot_id,
            referring_doctor_code=example.doctor_code,
            resident=models.ResidentRef(id_number=example.id_number, name=example.name),
            consultation=models.Consultation(
                encounter_id=f"DEMO-ENC-{now.astimezone(SHANGHAI):%Y%m%d%H%M}",
                encountered_at=(now - timedelta(hours=1)).astimezone(SHANGHAI),
            ),
            diagnoses=["I10"],
        )
        answer = await book.asyncio_detailed(client=c, body=body, idempotency_key="demo-1")
        assert answer.status_code == 201, answer.content
        referral = answer.parsed
        assert isinstance(referral, models.ReferralOut)
        assert referral.status == "booked" and referral.slot.id == slot.slot_id
        assert referral.referring_doctor.code == example.doctor_code
        assert referral.verification_code

        # The same Idempotency-Key answers the same referral; a read through the client agrees.
        again = await book.asyncio_detailed(client=c, body=body, idempotency_key="demo-1")
        assert again.status_code == 201 and again.headers.get("idempotent-replayed") == "true"
        assert again.parsed.reference == referral.reference
        fetched = await read.asyncio(client=c, reference=referral.reference)
        assert isinstance(fetched, models.ReferralOut) and fetched.reference == referral.reference

        # A refusal arrives as the generated Problem, with its documented code.
        taken = await book.asyncio_detailed(client=c, body=body)
        assert taken.status_code == 409
        assert isinstance(taken.parsed, models.Problem) and taken.parsed.code == "slot_taken"
