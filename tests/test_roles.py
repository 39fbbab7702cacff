"""The runtime role cannot get past the audit trail's protection, however it tries (R15).

These connect exactly as the service does (``database_url`` is the runtime role's login that
``slotpool migrate`` created and granted) and try every way around the append-only trail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture
async def runtime(clean_db: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(_plain(clean_db))
    await conn.execute(
        "INSERT INTO audit_entries (at, actor, action, detail) VALUES (now(), 'test', 'kept', '{}')"
    )
    yield conn
    await conn.close()


def _owner_name(owner_url: str) -> str:
    name = make_url(owner_url).username
    assert name
    return name


BYPASSES = {
    "replica mode skips triggers": "SET session_replication_role = replica",
    "replica mode for one transaction": "SET LOCAL session_replication_role = replica",
    "disable every trigger": "ALTER TABLE audit_entries DISABLE TRIGGER ALL",
    "disable the append-only trigger": "ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_append_only",
    "drop the trigger": "DROP TRIGGER audit_entries_append_only ON audit_entries",
    "replace the trigger function": (
        "CREATE OR REPLACE FUNCTION audit_entries_append_only() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; END $$"
    ),
    "delete": "DELETE FROM audit_entries",
    "update": "UPDATE audit_entries SET reason = 'rewritten'",
    "truncate": "TRUNCATE audit_entries",
    "truncate through a cascade": "TRUNCATE residents CASCADE",
    "drop the table": "DROP TABLE audit_entries",
    "rename the table away": "ALTER TABLE audit_entries RENAME TO audit_entries_old",
    "take the table over": "ALTER TABLE audit_entries OWNER TO CURRENT_USER",
    "a rule that rewrites inserts": (
        "CREATE RULE drop_inserts AS ON INSERT TO audit_entries DO INSTEAD NOTHING"
    ),
    "a policy hiding rows": "ALTER TABLE audit_entries ENABLE ROW LEVEL SECURITY",
    "a table in public": "CREATE TABLE public.shadow (id int)",
    "a schema of its own": "CREATE SCHEMA shadow",
    "a temporary table shadowing the trail": "CREATE TEMP TABLE audit_entries (id int)",
    "a lock that blocks every writer": "LOCK TABLE audit_entries IN ACCESS EXCLUSIVE MODE",
    "rewrite the schema version": "UPDATE alembic_version SET version_num = 'x'",
    "become a superuser": "ALTER ROLE CURRENT_USER SUPERUSER",
}


@pytest.mark.parametrize("statement", list(BYPASSES.values()), ids=list(BYPASSES))
async def test_r15_the_runtime_role_cannot_get_around_the_audit_trail(runtime, statement):
    # 42501 insufficient_privilege: refused for want of a privilege, not by accident.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with runtime.transaction():
            await runtime.execute(statement)
    assert await runtime.fetchval("SELECT count(*) FROM audit_entries WHERE action = 'kept'") == 1


async def test_r15_the_runtime_role_cannot_set_role_to_the_owner(runtime, owner_url):
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await runtime.execute(f'SET ROLE "{_owner_name(owner_url)}"')
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await runtime.execute(f'SET SESSION AUTHORIZATION "{_owner_name(owner_url)}"')
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await runtime.execute(f'GRANT "{_owner_name(owner_url)}" TO CURRENT_USER')
    assert await runtime.fetchval("SELECT current_user <> $1", _owner_name(owner_url))


async def test_r15_the_runtime_role_cannot_grant_itself_what_it_lacks(runtime):
    # A GRANT by a non-owner without grant option grants nothing (a warning, not an error).
    await runtime.execute("GRANT DELETE, TRUNCATE ON audit_entries TO CURRENT_USER")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await runtime.execute("DELETE FROM audit_entries")


async def test_r15_the_runtime_role_appends_to_and_reads_the_trail(runtime):
    await runtime.execute(
        "INSERT INTO audit_entries (at, actor, action, detail) VALUES (now(), 'test', 'appended', '{}')"
    )
    assert await runtime.fetchval("SELECT count(*) FROM audit_entries") == 2


async def test_the_runtime_role_owns_nothing_and_has_no_special_attributes(runtime, owner_url):
    role = await runtime.fetchrow(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
        "FROM pg_roles WHERE rolname = current_user"
    )
    assert not any(role.values())
    owned = await runtime.fetchval(
        "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
    )
    assert owned == 0
    assert not await runtime.fetchval("SELECT pg_has_role($1, 'MEMBER')", _owner_name(owner_url))
    assert not await runtime.fetchval("SELECT has_schema_privilege('public', 'CREATE')")
    assert not await runtime.fetchval("SELECT has_database_privilege(current_database(), 'CREATE')")
    assert not await runtime.fetchval("SELECT has_database_privilege(current_database(), 'TEMP')")
    # No function runs with the owner's rights on the runtime role's behalf.
    assert (
        await runtime.fetchval(
            "SELECT count(*) FROM pg_proc WHERE prosecdef AND pronamespace = 'public'::regnamespace"
        )
        == 0
    )


async def test_the_runtime_role_has_exactly_the_grants_it_needs(runtime):
    privileges = {
        r["table_name"]: set(r["privileges"])
        for r in await runtime.fetch(
            "SELECT table_name, array_agg(privilege_type::text) AS privileges "
            "FROM information_schema.role_table_grants "
            "WHERE grantee = current_user AND table_schema = 'public' GROUP BY table_name"
        )
    }
    assert privileges["audit_entries"] == {"INSERT", "SELECT"}
    assert privileges["alembic_version"] == {"SELECT"}
    assert privileges["slots"] == {"SELECT", "INSERT", "UPDATE", "DELETE"}
    assert all(
        "TRUNCATE" not in p and "TRIGGER" not in p and "REFERENCES" not in p for p in privileges.values()
    )
    tables = {
        r["tablename"]
        for r in await runtime.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert set(privileges) == tables


async def test_a_table_the_owner_adds_later_is_granted_by_default(owner_url, database_url):
    owner = await asyncpg.connect(_plain(owner_url))
    runtime = await asyncpg.connect(_plain(database_url))
    try:
        await owner.execute("CREATE TABLE later_table (id int)")
        await runtime.execute("INSERT INTO later_table VALUES (1)")
        assert await runtime.fetchval("SELECT count(*) FROM later_table") == 1
    finally:
        await owner.execute("DROP TABLE IF EXISTS later_table")
        await owner.close()
        await runtime.close()
