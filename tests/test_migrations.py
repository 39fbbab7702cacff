"""The migrations are the schema: the models must describe exactly what they build."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

import service.models  # noqa: F401  (every model, so the metadata is whole)
from service.kit.db import Base, asyncpg_url
from service.models.migrations import ALEMBIC_DIR, alembic_config


async def test_the_models_match_the_migrated_schema(database_url):
    """Alembic's comparison of the models with a database built by the revisions finds nothing."""
    engine = create_async_engine(asyncpg_url(database_url))
    try:
        async with engine.connect() as conn:

            def compare(sync_conn: Connection) -> list[Any]:
                context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
                with warnings.catch_warnings():
                    # Reflection does not know xid8 (the availability counts' change stamp); the
                    # model declares it with a type of its own, which the comparison accepts.
                    warnings.filterwarnings("ignore", "Did not recognize type 'xid8'", sa_exc.SAWarning)
                    return compare_metadata(context, Base.metadata)

            differences = await conn.run_sync(compare)
    finally:
        await engine.dispose()
    assert differences == []


def test_revision_files_are_named_by_their_revision_in_order():
    """A listing of alembic/versions shows the order the revisions apply in."""
    script = ScriptDirectory.from_config(alembic_config("postgresql://x/y"))
    chain = [r.revision for r in reversed(list(script.walk_revisions()))]
    files = sorted(p.name for p in (ALEMBIC_DIR / "versions").glob("*.py"))
    assert [name.split("_", 1)[0] for name in files] == chain
    assert all(Path(script.get_revision(rev).path).name.startswith(f"{rev}_") for rev in chain)


# The tables docs/performance.md would distribute by hospital when one PostgreSQL is no
# longer enough (Citus). Each already carries its hospital on every row, so that move is a
# migration (keys widened to include hospital_id), not a rewrite.
DISTRIBUTED_BY_HOSPITAL = {
    "availability_counts", "clinic_sessions", "departments", "events", "no_show_bars", "referral_counts",
    "referrals", "report_department_days", "report_hospital_days", "reservation_shortfalls", "slots",
}  # fmt: skip
# Webhook endpoints belong to a hospital or a primary institution (revision 0022): they would be
# distributed by their owner, so a hospital's endpoints stay with its events.
DISTRIBUTED_BY_OWNER = {"webhook_endpoints": "organisation_id"}


async def test_every_table_to_be_distributed_by_hospital_carries_it_on_every_row(database_url):
    engine = create_async_engine(asyncpg_url(database_url))
    try:
        async with engine.connect() as conn:
            rows = await conn.exec_driver_sql(
                "SELECT table_name, is_nullable FROM information_schema.columns "
                "WHERE table_schema = 'public' AND column_name = 'hospital_id'"
            )
            carried = {row[0]: row[1] for row in rows.all()}
    finally:
        await engine.dispose()
    assert {name: carried.get(name) for name in DISTRIBUTED_BY_HOSPITAL} == dict.fromkeys(
        DISTRIBUTED_BY_HOSPITAL, "NO"
    )


async def test_webhook_endpoints_carry_their_owner_on_every_row(database_url):
    engine = create_async_engine(asyncpg_url(database_url))
    try:
        async with engine.connect() as conn:
            rows = await conn.exec_driver_sql(
                "SELECT table_name, column_name, is_nullable FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = ANY($1)",
                (list(DISTRIBUTED_BY_OWNER),),
            )
            columns = {(row[0], row[1]): row[2] for row in rows.all()}
    finally:
        await engine.dispose()
    for table, column in DISTRIBUTED_BY_OWNER.items():
        assert columns.get((table, column)) == "NO", (table, column)
        assert (table, "hospital_id") not in columns, table
    assert columns  # the query found the tables
