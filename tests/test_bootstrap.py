"""`slotpool bootstrap` and `slotpool create-client`, run as the operator runs them: real processes.

Each test gets a database of its own on the test server, empty until the test migrates it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from service.app import create_app
from service.kit.clock import ManualClock
from service.kit.config import Settings
from service.registry.bootstrap import divisions_for, shipped_divisions
from tests.conftest import START

TIANJIN = "天津市卫生健康委员会"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def slotpool(*args: str, env: dict[str, str], timeout: float = 120) -> Run:
    """Run the `slotpool` command in a process of its own, with only the given settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLOTPOOL_") and k != "DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env={**base, "SLOTPOOL_LOG_JSON": "false", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture
async def empty_url(owner_url: str) -> AsyncIterator[str]:
    """A new, empty database on the test server (not migrated)."""
    name = f"slotpool_boot_{uuid.uuid4().hex[:8]}"
    admin_url = make_url(owner_url).set(database="postgres").render_as_string(hide_password=False)
    admin = await asyncpg.connect(_plain(admin_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    yield make_url(owner_url).set(database=name).render_as_string(hide_password=False)
    admin = await asyncpg.connect(_plain(admin_url))
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


def env_for(url: str) -> dict[str, str]:
    # One role owns and uses the test database, so the migration URL is the same one; the
    # commands run in development mode against a server of the test's choosing.
    return {
        "DATABASE_URL": url,
        "SLOTPOOL_MIGRATION_DATABASE_URL": url,
        "SLOTPOOL_ALLOW_DEVELOPMENT_WITH_DEPLOYMENT_SETTINGS": "true",
    }


async def fetch(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(_plain(url))
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def refused_in_one_line(run: Run, *fragments: str) -> None:
    assert run.returncode != 0, run
    assert run.stdout == "", run
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


async def test_shipped_divisions_cover_every_province_to_county_level():
    divisions = shipped_divisions()
    provinces = [d for d in divisions.values() if d.level == "province"]
    counties = [d for d in divisions.values() if d.level == "county"]
    assert len(provinces) == 31  # the mainland's provincial-level divisions
    assert len(counties) > 2800
    for d in divisions.values():  # every parent is listed, one level up
        if d.level == "province":
            assert d.parent_code is None
        else:
            parent = divisions[d.parent_code or ""]
            assert (parent.level, d.level) in {("province", "city"), ("city", "county")}
            assert d.code.startswith(parent.code[: 2 if parent.level == "province" else 4])
    tianjin = divisions_for("120104")  # a district asks for its whole province, parents first
    assert [d.code for d in tianjin[:2]] == ["120000", "120100"]
    assert {d.code[:2] for d in tianjin} == {"12"}
    assert "120104" in {d.code for d in tianjin} and len(tianjin) == 18


async def test_bootstrap_from_an_empty_database_issues_a_commission_key_that_registers_organisations(
    empty_url: str, settings: Settings
):
    env = env_for(empty_url)
    before = slotpool("bootstrap", "--region", "120000", "--commission-name", TIANJIN, env=env)
    refused_in_one_line(before, "slotpool migrate")

    assert slotpool("migrate", env=env).returncode == 0
    first = slotpool("bootstrap", "--region", "120000", "--commission-name", TIANJIN, env=env)
    assert first.returncode == 0, first.stderr
    key = first.stdout.strip()
    assert first.stdout == key + "\n" and key.startswith("sp_")
    assert "Store this key now" in first.stderr and key not in first.stderr

    regions = await fetch(empty_url, "SELECT code, name, level, parent_code FROM regions ORDER BY code")
    assert [r["code"] for r in regions] == sorted(d.code for d in divisions_for("120000"))
    assert regions[0]["name"] == "天津市" and len(regions) == 18
    audit = await fetch(empty_url, "SELECT actor, action, detail FROM audit_entries")
    assert [(a["actor"], a["action"]) for a in audit] == [
        ("cli", "organisation.created"),
        ("cli", "api_client.issued"),
        ("cli", "region.bootstrap"),
    ]

    app = create_app(settings, database_url=empty_url, clock=ManualClock(START), run_loops=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://slotpool.test") as http:
            me = await http.get("/v1/me", headers={"Authorization": f"Bearer {key}"})
            assert me.status_code == 200, me.text
            assert me.json()["role"] == "commission"
            assert me.json()["organisation"]["region_code"] == "120000"
            assert me.json()["organisation"]["name"] == TIANJIN
            hospital = await http.post(
                "/v1/organisations",
                headers={"Authorization": f"Bearer {key}"},
                json={
                    "code": "TJ-H-1",
                    "name": "天津市和平医院",
                    "kind": "hospital",
                    "region_code": "120101",
                    "hospital_level": 3,
                    "hospital_tier": "city",
                },
            )
            assert hospital.status_code == 201, hospital.text

            again = slotpool("bootstrap", "--region", "120000", "--commission-name", TIANJIN, env=env)
            refused_in_one_line(again, "already bootstrapped", "--force")

            forced = slotpool(
                "bootstrap", "--region", "120000", "--commission-name", TIANJIN, "--force", env=env
            )
            assert forced.returncode == 0, forced.stderr
            new_key = forced.stdout.strip()
            assert new_key.startswith("sp_") and new_key != key
            for token in (key, new_key):  # the first key is not revoked by --force
                me = await http.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
                assert me.status_code == 200 and me.json()["organisation"]["code"] == "COMMISSION-120000"

    assert len(await fetch(empty_url, "SELECT 1 FROM regions")) == 18
    orgs = await fetch(empty_url, "SELECT code, kind FROM organisations ORDER BY id")
    assert [(o["code"], o["kind"]) for o in orgs] == [
        ("COMMISSION-120000", "authority"),
        ("TJ-H-1", "hospital"),
    ]
    clients = await fetch(empty_url, "SELECT role, organisation_id FROM api_clients")
    assert [c["role"] for c in clients] == ["commission", "commission"]
    assert len({c["organisation_id"] for c in clients}) == 1
    audit = await fetch(empty_url, "SELECT action, detail FROM audit_entries ORDER BY id")
    assert [a["action"] for a in audit] == [
        "organisation.created",  # the commission, by bootstrap
        "api_client.issued",
        "region.bootstrap",
        "organisation.created",  # the hospital, through the API with the first key
        "api_client.issued",
        "region.bootstrap",
    ]
    assert '"force": true' in audit[-1]["detail"] and '"divisions_added": 0' in audit[-1]["detail"]


async def test_bootstrap_refuses_a_second_commission_for_a_bootstrapped_region_under_another_code(
    empty_url: str,
):
    env = env_for(empty_url)
    assert slotpool("migrate", env=env).returncode == 0
    assert slotpool("bootstrap", "--region", "120000", "--commission-name", TIANJIN, env=env).returncode == 0
    other = slotpool(
        "bootstrap", "--region", "120000", "--commission-name", TIANJIN, "--commission-code", "TJ-WJW", "--force",
        env=env,
    )  # fmt: skip
    refused_in_one_line(other, "already has a commission, COMMISSION-120000")
    unknown = slotpool("bootstrap", "--region", "129999", "--commission-name", "x", env=env)
    refused_in_one_line(unknown, "129999 is not a division")
    assert len(await fetch(empty_url, "SELECT 1 FROM organisations")) == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_create_client_fails_in_one_line(empty_url: str):
    env = env_for(empty_url)
    args = ("create-client", "--org-code", "COMMISSION-120000", "--role", "platform", "--name", "platform")
    refused_in_one_line(slotpool(*args, env=env), "run `slotpool migrate` first")
    down = f"postgresql://postgres@127.0.0.1:{_closed_port()}/slotpool"
    refused_in_one_line(slotpool(*args, env=env_for(down)), "cannot connect to the database")

    assert slotpool("migrate", env=env).returncode == 0
    refused_in_one_line(slotpool(*args, env=env), "no organisation with code COMMISSION-120000")
    assert slotpool("bootstrap", "--region", "120000", "--commission-name", TIANJIN, env=env).returncode == 0
    wrong = ("create-client", "--org-code", "COMMISSION-120000", "--role", "hospital", "--name", "x")
    refused_in_one_line(slotpool(*wrong, env=env), "cannot hold a hospital key", "allowed: platform")

    made = slotpool(*args, env=env)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().startswith("sp_")
    audit = await fetch(empty_url, "SELECT action FROM audit_entries ORDER BY id")
    assert [a["action"] for a in audit] == [
        "organisation.created",
        "api_client.issued",
        "region.bootstrap",
        "api_client.issued",
    ]


def _wait_until_healthy(base: str, server: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        assert server.poll() is None, "serve exited"
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("serve did not come up")


@pytest.fixture
def embedded_data_dir() -> Iterator[Path]:
    data_dir = Path(tempfile.mkdtemp(prefix="slotpool-boot-"))
    yield data_dir
    pid_file = data_dir / "pgdata" / "postmaster.pid"
    if pid_file.exists():  # stop the embedded server this test started, should it still run
        pid = int(pid_file.read_text().split()[0])
        try:
            os.kill(pid, signal.SIGTERM)
            time.sleep(1)
        except ProcessLookupError:
            pass
    shutil.rmtree(data_dir, ignore_errors=True)


def test_create_client_attaches_to_the_embedded_server_of_a_running_serve(embedded_data_dir: Path):
    """No DATABASE_URL: a second process with the same SLOTPOOL_DATA_DIR shares the running server."""
    env = {"SLOTPOOL_DATA_DIR": str(embedded_data_dir)}
    assert slotpool("migrate", env=env, timeout=180).returncode == 0
    port = _closed_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--no-loops", "--port", str(port)],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SLOTPOOL_")}, **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until_healthy(base, server, time.monotonic() + 120)
        boot = slotpool("bootstrap", "--region", "120000", "--commission-name", TIANJIN, env=env)
        assert boot.returncode == 0, boot.stderr
        commission = {"Authorization": f"Bearer {boot.stdout.strip()}"}
        org = {
            "code": "TJ-PLAT",
            "name": "天津市家庭医生签约服务平台",
            "kind": "authority",
            "region_code": "120000",
        }
        assert httpx.post(f"{base}/v1/organisations", json=org, headers=commission).status_code == 201

        made = slotpool(
            "create-client", "--org-code", "TJ-PLAT", "--role", "platform", "--name", "x", env=env
        )
        assert made.returncode == 0, made.stderr
        # The second process has exited; the server it attached to is still the running one's.
        me = httpx.get(f"{base}/v1/me", headers={"Authorization": f"Bearer {made.stdout.strip()}"})
        assert me.status_code == 200 and me.json()["role"] == "platform"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    # The last process to leave stops the server it shared.
    assert not (embedded_data_dir / "pgdata" / "postmaster.pid").exists()
