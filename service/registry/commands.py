"""How the operator's registry commands (``bootstrap``, ``create-client``; their entry points
are in service/cli.py) reach the database.

Both run against DATABASE_URL (the runtime connection, or the embedded server, which a second
process shares with a running ``serve``), require the schema to be migrated, and fail with one
line on stderr and a non-zero exit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

import service.models  # noqa: F401  (every model, so a flush can order its inserts)
from service.kit.cli_failures import CommandRefused
from service.kit.clock import Clock
from service.kit.context import Actor
from service.kit.db import Database
from service.kit.dberrors import sqlstate
from service.kit.errors import Problem

T = TypeVar("T")
INSUFFICIENT_PRIVILEGE = "42501"
NO_PRIVILEGE = (
    "the role in DATABASE_URL has no privileges on the slotpool tables: "
    "run `slotpool migrate`, which grants them, first"
)
STORE_IT = "Store this key now: it is shown once and kept only as a digest."


class Refused(Exception):
    """Why a command cannot go on, in one line."""


def fail(command: str, message: str) -> CommandRefused:
    """The one line (``slotpool <command>: …``) and exit status 1 a refused command ends with;
    ``slotpool --debug`` adds the traceback of what it was refused on."""
    return CommandRefused(command, message)


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def check_schema(url: str) -> None:
    """Refuse, in one line, a database that does not answer or whose schema is not at head."""
    from service.models.migrations import head_revision

    try:
        conn = await asyncpg.connect(_plain(url), timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise Refused(f"cannot connect to the database in DATABASE_URL ({reason})") from exc
    try:
        if await conn.fetchval("SELECT to_regclass('alembic_version')") is None:
            version = None
        else:
            version = await conn.fetchval("SELECT version_num FROM alembic_version")
    except asyncpg.InsufficientPrivilegeError:
        raise Refused(NO_PRIVILEGE) from None
    finally:
        await conn.close()
    head = head_revision()
    if version is None:
        raise Refused("the database has no slotpool schema yet: run `slotpool migrate` first")
    if version != head:
        raise Refused(
            f"the database schema is at revision {version} and this slotpool needs {head}: "
            "run this version's `slotpool migrate` first",
        )


def run_unit(command: str, url: str, work: Callable[[AsyncSession, Actor], Awaitable[T]]) -> T:
    """Check the schema, then run ``work`` in one committed transaction as the CLI actor."""

    async def main() -> T:
        await check_schema(url)
        db = Database(url, pool_size=1)
        try:
            actor = Actor.system("cli", now=Clock().now())
            return await db.run(lambda session: work(session, actor))
        finally:
            await db.dispose()

    try:
        return asyncio.run(main())
    except (Refused, Problem) as exc:
        raise fail(command, str(exc)) from exc
    except DBAPIError as exc:
        if sqlstate(exc) == INSUFFICIENT_PRIVILEGE:
            raise fail(command, NO_PRIVILEGE) from exc
        raise
