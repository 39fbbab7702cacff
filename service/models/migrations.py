"""Alembic, driven from code: the schema is exactly what the revisions build.

``migrate`` is the one-shot a deployment runs before its replicas start: as the schema owner,
under a session-level advisory lock (so two replicas or two jobs started at once take turns),
it upgrades to head, records which builds the schema still serves, and brings the runtime
role's grants in step (``RUNTIME_GRANTS``, the only place they are written).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import structlog
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from alembic import command
from service.kit.db import Database, advisory_key, asyncpg_url

ALEMBIC_DIR = Path(__file__).resolve().parents[2] / "alembic"
MIGRATION_LOCK = advisory_key("migrations")
log = structlog.get_logger("slotpool.migrations")


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    cfg.attributes["url"] = asyncpg_url(url)
    return cfg


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("postgresql://x/y"))


def head_revision() -> str:
    heads = script_directory().get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"expected one migration head, found {heads}")
    return heads[0]


def oldest_serving_build(revision: str, scripts: ScriptDirectory | None = None) -> str:
    """The oldest build revision that still works on a schema at ``revision``.

    Migrations are expand/contract: a revision whose module sets ``EXPAND_ONLY = True`` only
    adds (tables, nullable columns, indexes, functions) and leaves every older build working;
    any other revision is a contract step that older builds cannot serve. So the answer is the
    newest non-expand revision at or below ``revision``.
    """
    scripts = scripts or script_directory()
    for script in scripts.iterate_revisions(revision, "base"):
        if not getattr(script.module, "EXPAND_ONLY", False):
            return script.revision
    return revision


def served_revisions() -> set[str]:
    """Every revision this build can serve a schema at: its head and the head's ancestors."""
    scripts = script_directory()
    return {s.revision for s in scripts.iterate_revisions(head_revision(), "base")}


def _upgrade(url: str, revision: str) -> None:
    command.upgrade(alembic_config(url), revision)


def _downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


async def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations; runs Alembic (which starts its own event loop) in a thread."""
    await asyncio.to_thread(_upgrade, url, revision)


async def downgrade(url: str, revision: str) -> None:
    await asyncio.to_thread(_downgrade, url, revision)


# --- the runtime role ----------------------------------------------------------------------------

# What the role that serves requests may do, and nothing more. It owns nothing, so it cannot
# ALTER, DROP, disable triggers or change grants; it is no superuser, so it cannot set
# session_replication_role; and on the audit trail it may only append and read (R15). Nor may
# it create anything: no tables in public, no temporary tables that would shadow the trail.
RUNTIME_GRANTS = """
REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC, {role};
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE ALL ON SCHEMA public FROM {role};
GRANT USAGE ON SCHEMA public TO {role};
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
REVOKE UPDATE, DELETE ON audit_entries FROM {role};
REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM {role};
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role};
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {role};
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role};
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE ON SEQUENCES TO {role};
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT EXECUTE ON FUNCTIONS TO {role};
"""


class RuntimeRoleError(RuntimeError):
    """The runtime role cannot be made safe by the migration owner; the operator must act."""


@dataclass(frozen=True)
class RuntimeRole:
    name: str
    # Set on a role this migration creates (from DATABASE_URL's password), never on an existing
    # one; kept out of repr so no traceback or log line shows it.
    password: str | None = field(default=None, repr=False)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def plain_url(url: str) -> str:
    """The libpq form asyncpg takes."""
    return "postgresql://" + asyncpg_url(url).removeprefix("postgresql+asyncpg://")


def url_user(url: str) -> str | None:
    return make_url(asyncpg_url(url)).username


def with_user(url: str, user: str, password: str | None = None) -> str:
    """``url`` logging in as ``user`` instead (e.g. the embedded owner's URL → the runtime role's)."""
    parts = urllib.parse.urlsplit(plain_url(url))
    userinfo = urllib.parse.quote(user, safe="")
    if password:
        userinfo += ":" + urllib.parse.quote(password, safe="")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc.rpartition('@')[2]}"))


async def ensure_runtime_role(conn: asyncpg.Connection, role: RuntimeRole) -> None:
    """Create the runtime role if missing (when the owner may), check it is safe, grant it."""
    me = await conn.fetchrow(
        "SELECT rolname, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user"
    )
    assert me is not None
    if role.name == me["rolname"]:
        raise RuntimeRoleError(
            f"the runtime role {role.name!r} is the schema owner: set DATABASE_URL to a role "
            "of its own (see docs/operations.md)"
        )
    found = await conn.fetchrow(
        "SELECT oid, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1", role.name
    )
    if found is None:
        if not (me["rolsuper"] or me["rolcreaterole"]):
            raise RuntimeRoleError(
                f"the runtime role {role.name!r} does not exist and the migration owner "
                f"{me['rolname']!r} may not create roles: create it (CREATE ROLE {role.name} "
                "LOGIN PASSWORD '…'), then run `slotpool migrate` again"
            )
        password = f" PASSWORD {_quote_literal(role.password)}" if role.password else ""
        try:
            await conn.execute(
                f"CREATE ROLE {quote_ident(role.name)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                f"NOREPLICATION NOBYPASSRLS{password}"
            )
        except asyncpg.DuplicateObjectError:
            pass  # created meanwhile for another database of the same cluster
        log.info("runtime role created", role=role.name)
    elif found["rolsuper"] or found["rolbypassrls"]:
        raise RuntimeRoleError(
            f"the runtime role {role.name!r} is a superuser or bypasses row security: it could "
            "rewrite the audit trail; give the service a plain role"
        )
    owned = await conn.fetchval(
        "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
        "WHERE r.rolname = $1 AND c.relnamespace = 'public'::regnamespace",
        role.name,
    )
    if owned:
        raise RuntimeRoleError(
            f"the runtime role {role.name!r} owns {owned} relations in schema public (the schema "
            f"was built as that role): as a superuser run REASSIGN OWNED BY {role.name} TO "
            f"{me['rolname']}, then `slotpool migrate` again"
        )
    member_of_owner = await conn.fetchval("SELECT pg_has_role($1, current_user, 'MEMBER')", role.name)
    if member_of_owner:
        raise RuntimeRoleError(
            f"the runtime role {role.name!r} is a member of the owner {me['rolname']!r} and could "
            f"SET ROLE to it: REVOKE {me['rolname']} FROM {role.name}"
        )
    async with conn.transaction():
        database = await conn.fetchval("SELECT current_database()")
        await conn.execute(RUNTIME_GRANTS.format(role=quote_ident(role.name), database=quote_ident(database)))


async def write_compatibility(conn: asyncpg.Connection) -> None:
    """Record the oldest build the schema serves, read by /readyz of every build."""
    current = await conn.fetchval("SELECT version_num FROM alembic_version")
    if current is None or await conn.fetchval("SELECT to_regclass('schema_compatibility')") is None:
        return
    oldest = oldest_serving_build(current)
    await conn.execute(
        "INSERT INTO schema_compatibility (id, oldest_build_revision, schema_revision) "
        "VALUES (1, $1, $2) ON CONFLICT (id) DO UPDATE SET "
        "oldest_build_revision = excluded.oldest_build_revision, schema_revision = excluded.schema_revision",
        oldest,
        current,
    )


async def migrate(
    owner_url: str,
    runtime: RuntimeRole | None,
    *,
    seed: Callable[[AsyncSession], Awaitable[object]] | None = None,
) -> None:
    """The one-shot before replicas start: upgrade, mark compatibility, grant, then ``seed``.

    Everything runs under a session-level advisory lock on an owner connection, so concurrent
    runs (two replicas, a job and a replica) wait for each other and the later one finds the
    schema at head. ``runtime`` None means a single-role deployment: no grants are written.
    ``seed`` writes the data every schema needs (the CLI passes the built-in policy presets),
    in one transaction of its own, still under the lock.
    """
    conn = await asyncpg.connect(plain_url(owner_url))
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            await upgrade(owner_url)
            await write_compatibility(conn)
            if runtime is not None:
                await ensure_runtime_role(conn, runtime)
            if seed is not None:
                db = Database(owner_url, pool_size=1)
                try:
                    await db.run(seed)
                finally:
                    await db.dispose()
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    finally:
        await conn.close()
