"""A real PostgreSQL built by the migrations, a controllable clock, and the app.

The server is the embedded one by default; set SLOTPOOL_TEST_DATABASE_URL to
a server's maintenance database as a superuser (e.g.
postgresql://postgres@127.0.0.1:5432/postgres) to run the suite there instead.
Either way a fresh database is created and migrated once per run by `migrate`
as the owner, which also creates a runtime role unique to the run; the app and
the factories connect as that role, with exactly production's grants. Every
table is emptied (by the owner) after each test, so tests can commit, run
concurrently and start loops like production does.

The reset is the suite's main fixed cost, so it is kept cheap without making it
weaker (see `Reset`): one owner connection for the whole run, DELETE rather than
TRUNCATE (which allocates, and later unlinks, new files for every table and
index at each test), and the world restored from rows `build_world` wrote once rather than
built again, whenever the rebuild would write exactly those rows.
"""

from __future__ import annotations

import asyncio
import io
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


class Reset:
    """Puts the database back between tests, as the owner, over one connection for the run.

    `empty` is TRUNCATE ... RESTART IDENTITY in effect: every table emptied, every identity
    restarted. It deletes instead, which for tables of a few rows costs a fraction of a
    TRUNCATE (no new files to allocate, fsync and unlink). The audit table refuses DELETE and
    TRUNCATE through triggers (R15), and foreign keys are triggers too: an operator's session
    that turns triggers off, as this one does, is the only way past them, and makes the order
    of the deletions irrelevant.

    `capture` and `restore` copy rows out and back in (binary COPY, triggers off, so rows that
    triggers derived are restored as they were, not derived twice) and set each identity where
    it stood.
    """

    def __init__(self, conn: asyncpg.Connection, table_names: list[str], sequences: list[Any]) -> None:
        self.conn = conn
        self.table_names = table_names
        self.sequences = {r["name"]: r["start"] for r in sequences}
        self._empty = "; ".join(
            [
                "BEGIN",
                *(f"DELETE FROM {name}" for name in table_names),
                "SELECT " + ", ".join(f"setval('{n}', {v}, false)" for n, v in self.sequences.items()),
                "COMMIT",
            ]
        )
        self._any_row = " OR ".join(f"EXISTS (SELECT FROM {name})" for name in table_names)

    @classmethod
    async def open(cls, owner_url: str, table_names: list[str]) -> Reset:
        conn = await asyncpg.connect(_plain(owner_url))
        await conn.execute("SET session_replication_role = replica")
        sequences = await conn.fetch(
            "SELECT s.oid::regclass::text AS name, q.seqstart AS start FROM pg_sequence q "
            "JOIN pg_class s ON s.oid = q.seqrelid "
            "JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass "
            "AND d.deptype IN ('a', 'i') "
            "JOIN pg_class t ON t.oid = d.refobjid "
            "WHERE t.relnamespace = 'public'::regnamespace AND t.relname = any($1::text[]) "
            "ORDER BY 1",
            table_names,
        )
        return cls(conn, table_names, sequences)

    async def close(self) -> None:
        await self.conn.close()

    async def empty(self) -> None:
        await self.conn.execute(self._empty)

    async def is_empty(self) -> bool:
        return not await self.conn.fetchval(f"SELECT {self._any_row}")

    async def capture(self) -> Rows:
        tables: dict[str, tuple[list[str], bytes]] = {}
        for name in self.table_names:
            if not await self.conn.fetchval(f"SELECT EXISTS (SELECT FROM {name})"):
                continue
            columns = [
                r["attname"]
                for r in await self.conn.fetch(
                    "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 "
                    "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
                    name,
                )
            ]
            out = io.BytesIO()
            await self.conn.copy_from_table(name, columns=columns, output=out, format="binary")
            tables[name] = (columns, out.getvalue())
        positions = {}
        for seq in self.sequences:
            row = await self.conn.fetchrow(f"SELECT last_value, is_called FROM {seq}")
            positions[seq] = (row["last_value"], row["is_called"])
        return Rows(tables, positions)

    async def restore(self, rows: Rows) -> None:
        async with self.conn.transaction():
            for name, (columns, data) in rows.tables.items():
                await self.conn.copy_to_table(name, source=io.BytesIO(data), columns=columns, format="binary")
            await self.conn.execute(
                "SELECT "
                + ", ".join(f"setval('{n}', {v}, {str(c).lower()})" for n, (v, c) in rows.sequences.items())
            )


@dataclass(frozen=True)
class Rows:
    """What some tables held: each table's columns and its binary COPY, and each identity's position."""

    tables: dict[str, tuple[list[str], bytes]]
    sequences: dict[str, tuple[int, bool]]


@dataclass(frozen=True)
class WorldRows:
    """The rows `build_world` writes into an empty database at START, and the `World` it returns.

    Restoring them is the same as building the world again when the database is empty, the
    clock reads START and the keys are the suite's (`fingerprint`); the `world` fixture checks all
    three and builds the world for real otherwise.
    """

    rows: Rows
    ids: dict[str, int]
    keys: dict[str, str]
    fingerprint: bytes


def _fingerprint(crypto: Crypto) -> bytes:
    return crypto.api_key_digest("world") + crypto.blind_index("world", purpose="world")


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


@pytest.fixture(scope="session")
async def reset(owner_url: str, table_names: list[str]) -> AsyncIterator[Reset]:
    cleaner = await Reset.open(owner_url, table_names)
    yield cleaner
    await cleaner.close()


@pytest.fixture
async def clean_db(database_url: str, reset: Reset) -> AsyncIterator[str]:
    yield database_url
    await reset.empty()


def _settings() -> Settings:
    # Tests deliver webhooks to receivers on loopback, which only this setting lets through.
    return Settings(
        run_loops=False, log_json=False, lock_timeout_ms=5000, db_pool_size=20, webhook_allow_loopback=True
    )


@pytest.fixture
def settings() -> Settings:
    return _settings()


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


@pytest.fixture(scope="session")
async def world_rows(database_url: str, reset: Reset) -> WorldRows:
    """`build_world` run once, into the empty database, with the suite's keys and clock."""
    assert await reset.is_empty()
    crypto = Crypto.from_settings(_settings())
    database = Database(database_url, pool_size=1)
    try:
        world = await build_world(database, crypto, ManualClock(START))
    finally:
        await database.dispose()
    rows = await reset.capture()
    await reset.empty()
    return WorldRows(rows, dict(world.ids), dict(world.keys), _fingerprint(crypto))


@pytest.fixture
async def world(
    db: Database, crypto: Crypto, clock: ManualClock, reset: Reset, world_rows: WorldRows
) -> World:
    # The rows `build_world` would write are restored instead when it would write exactly those:
    # same keys, same clock reading, nothing in the database yet. Otherwise it runs for real.
    if clock.now() == START and _fingerprint(crypto) == world_rows.fingerprint and await reset.is_empty():
        await reset.restore(world_rows.rows)
        return World(clock=clock, db=db, ids=dict(world_rows.ids), keys=dict(world_rows.keys))
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
