"""A real PostgreSQL built by the migrations, a controllable clock, and the app.

The server is the embedded one by default; set SLOTPOOL_TEST_DATABASE_URL to
a server's maintenance database as a superuser (e.g.
postgresql://postgres@127.0.0.1:5432/postgres) to run the suite there instead.
Either way a fresh database is created and migrated once per run by `migrate`
as the owner, which also creates a runtime role unique to the run; the app and
the factories connect as that role, with exactly production's grants. Every
table is truncated (by the owner) after each test, so tests can commit, run
concurrently and start loops like production does.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from service.app import create_app
from service.cli import seed_presets
from service.kit.clock import SHANGHAI, ManualClock
from service.kit.config import Settings
from service.kit.crypto import Crypto
from service.kit.db import Database
from service.models.migrations import RuntimeRole, migrate, with_user
from tests.factories import World, build_world

# Monday 2 March 2026, 09:00 Beijing time: every test starts here unless it moves the clock.
START = datetime(2026, 3, 2, 9, 0, tzinfo=SHANGHAI)


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@dataclass(frozen=True)
class SuiteDatabase:
    """One run's database: the owner builds and cleans it, the app runs as the runtime role."""

    admin_url: str  # the server's maintenance database, as its superuser
    owner_url: str  # the schema owner (that superuser): migrations and per-test cleanup
    runtime_url: str  # the app's login: a role `slotpool migrate` created and granted
    runtime_role: str


async def _truncate_all(owner_url: str, table_names: list[str]) -> None:
    conn = await asyncpg.connect(_plain(owner_url))
    try:
        # The audit table refuses TRUNCATE through a trigger (R15); an operator's session that
        # turns triggers off, as this cleanup does as the owner, is the only way past it.
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(f"TRUNCATE {', '.join(table_names)} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def suite_database() -> AsyncIterator[SuiteDatabase]:
    external = os.environ.get("SLOTPOOL_TEST_DATABASE_URL")
    server = None
    if external:
        admin_url = external
    else:
        from service.kit import embedded

        tmp = tempfile.mkdtemp(prefix="slotpool-test-")
        server = embedded.start(Path(tmp), cleanup="delete")
        admin_url = embedded.server_url(server, "postgres")
    run = uuid.uuid4().hex[:8]
    name = f"slotpool_test_{run}"
    # Roles are cluster-wide and several suites may share a server: one role per run.
    role = f"slotpool_test_rt_{run}"
    password = secrets.token_urlsafe(18)
    admin = await asyncpg.connect(_plain(admin_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    owner_url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        await migrate(owner_url, RuntimeRole(role, password=password), seed=seed_presets)
        yield SuiteDatabase(admin_url, owner_url, with_user(owner_url, role, password), role)
    finally:
        conn = await asyncpg.connect(_plain(owner_url))
        if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            await conn.execute(f"REASSIGN OWNED BY {role} TO CURRENT_USER")
            await conn.execute(f"DROP OWNED BY {role}")
        await conn.close()
        admin = await asyncpg.connect(_plain(admin_url))
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
        if server is not None:
            server.cleanup()


@pytest.fixture(scope="session")
async def table_names(suite_database: SuiteDatabase) -> list[str]:
    conn = await asyncpg.connect(_plain(suite_database.owner_url))
    rows = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
        "AND tablename NOT IN ('alembic_version', 'schema_compatibility')"
    )
    await conn.close()
    names = [r["tablename"] for r in rows]
    await _truncate_all(suite_database.owner_url, names)  # what `migrate` installed (presets)
    return names


@pytest.fixture(scope="session")
def database_url(suite_database: SuiteDatabase, table_names: list[str]) -> str:
    """The runtime role's URL: what the app under test and the factories connect as."""
    return suite_database.runtime_url


@pytest.fixture(scope="session")
def owner_url(suite_database: SuiteDatabase) -> str:
    """The schema owner's URL, for what the service itself may not do (DDL, roles, databases)."""
    return suite_database.owner_url


@pytest.fixture
async def clean_db(database_url: str, owner_url: str, table_names: list[str]) -> AsyncIterator[str]:
    yield database_url
    await _truncate_all(owner_url, table_names)


@pytest.fixture
def settings() -> Settings:
    # Tests deliver webhooks to receivers on loopback, which only this setting lets through.
    return Settings(
        run_loops=False, log_json=False, lock_timeout_ms=5000, db_pool_size=20, webhook_allow_loopback=True
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def crypto(settings: Settings) -> Crypto:
    return Crypto.from_settings(settings)


@pytest.fixture
async def db(clean_db: str) -> AsyncIterator[Database]:
    database = Database(clean_db, pool_size=5)
    yield database
    await database.dispose()


@pytest.fixture
async def app(clean_db: str, settings: Settings, clock: ManualClock) -> AsyncIterator[Any]:
    application = create_app(settings, database_url=clean_db, clock=clock, run_loops=False)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://slotpool.test") as c:
        yield c


@pytest.fixture
async def world(db: Database, crypto: Crypto, clock: ManualClock) -> World:
    return await build_world(db, crypto, clock)


@pytest.fixture
async def live_server(app: Any) -> AsyncIterator[str]:
    """The app behind a real uvicorn HTTP server on a loopback port."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn exposes no start event)
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task
