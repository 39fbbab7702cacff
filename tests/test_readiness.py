"""/readyz during a rolling deploy: ready when the schema serves this build, whichever side is newer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from service.models.migrations import head_revision, oldest_serving_build, served_revisions


@pytest.fixture
async def owner(owner_url: str) -> AsyncIterator[asyncpg.Connection]:
    """The owner's connection, restoring the schema's revision and marker afterwards."""
    conn = await asyncpg.connect(owner_url.replace("postgresql+asyncpg://", "postgresql://"))
    marker = await conn.fetchval("SELECT oldest_build_revision FROM schema_compatibility")
    yield conn
    await conn.execute("UPDATE alembic_version SET version_num = $1", head_revision())
    await conn.execute("UPDATE schema_compatibility SET oldest_build_revision = $1", marker)
    await conn.close()


async def test_migrate_records_the_oldest_build_the_schema_serves(owner):
    row = await owner.fetchrow("SELECT oldest_build_revision, schema_revision FROM schema_compatibility")
    assert row["schema_revision"] == head_revision()
    assert row["oldest_build_revision"] == oldest_serving_build(head_revision())
    assert row["oldest_build_revision"] in served_revisions()


async def test_readyz_is_ready_at_this_builds_head(client, owner):
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "schema": head_revision()}


async def test_readyz_is_ready_when_a_newer_build_migrated_compatibly(client, owner):
    """A newer build's expand-only migration leaves this build's head as still served."""
    await owner.execute("UPDATE alembic_version SET version_num = '9999_newer'")
    await owner.execute("UPDATE schema_compatibility SET oldest_build_revision = $1", head_revision())
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "schema": "9999_newer", "build": head_revision()}


async def test_readyz_is_503_schema_incompatible_after_a_contract_this_build_predates(client, owner):
    await owner.execute("UPDATE alembic_version SET version_num = '9999_newer'")
    await owner.execute("UPDATE schema_compatibility SET oldest_build_revision = '9998_newer'")
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "schema_incompatible"


async def test_readyz_is_503_migrations_pending_when_the_schema_is_behind(client, owner):
    previous = min(served_revisions())
    await owner.execute("UPDATE alembic_version SET version_num = $1", previous)
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["code"] == "migrations_pending"


def test_only_revisions_marked_expand_only_keep_older_builds_ready():
    """The marker walks back over expand-only revisions to the newest contract step."""
    from service.models.migrations import script_directory

    scripts = script_directory()
    for script in scripts.iterate_revisions(head_revision(), "base"):
        oldest = oldest_serving_build(script.revision, scripts)
        if getattr(script.module, "EXPAND_ONLY", False):
            assert oldest == oldest_serving_build(script.down_revision, scripts)  # type: ignore[arg-type]
        else:
            assert oldest == script.revision
