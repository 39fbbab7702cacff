"""The operator's commands that write registry data: ``bootstrap`` and ``create-client``.

Both run against DATABASE_URL (the runtime connection, or the embedded server, which a second
process shares with a running ``serve``), require the schema to be migrated, and fail with one
line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

import service.models  # noqa: F401  (every model, so a flush can order its inserts)
from service.cli_failures import CommandRefused
from service.clock import Clock
from service.config import Settings
from service.context import Actor
from service.db import Database
from service.dberrors import sqlstate
from service.errors import Problem

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
    from service.migrations import head_revision

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


def cmd_bootstrap(args: argparse.Namespace, settings: Settings) -> None:
    from service.cli import crypto_from, resolve_database_url
    from service.registry.bootstrap import Bootstrapped, bootstrap_region, divisions_for

    try:
        divisions_for(args.region)  # an unknown code is refused before any database is touched
    except Problem as problem:
        raise fail("bootstrap", problem.detail) from problem
    url = resolve_database_url(settings)

    async def work(session: AsyncSession, actor: Actor) -> Bootstrapped:
        return await bootstrap_region(
            session=session,
            actor=actor,
            crypto=crypto_from(settings),
            region_code=args.region,
            commission_name=args.commission_name,
            commission_code=args.commission_code,
            force=args.force,
        )

    done = run_unit("bootstrap", url, work)
    org = done.organisation
    what = "created" if done.organisation_created else "kept"
    print(
        f"region {args.region}: {done.divisions_added} divisions added; commission {org.code} "
        f"({org.name}) {what}; commission key for API client {done.client.id}:",
        file=sys.stderr,
    )
    print(done.token, flush=True)
    print(STORE_IT, file=sys.stderr)


def cmd_create_client(args: argparse.Namespace, settings: Settings) -> None:
    from service.cli import crypto_from, resolve_database_url
    from service.registry.service import ROLE_ORG_KINDS, create_api_client, org_by_code

    url = resolve_database_url(settings)

    async def work(session: AsyncSession, actor: Actor) -> str:
        try:
            org = await org_by_code(session, args.org_code)
        except Problem:
            raise Refused(f"no organisation with code {args.org_code} (codes are case-sensitive)") from None
        allowed = [role for role, kinds in ROLE_ORG_KINDS.items() if org.kind in kinds]
        if args.role not in allowed:
            article = "an" if org.kind[0] in "aeiou" else "a"
            raise Refused(
                f"{args.org_code} is {article} {org.kind} organisation and cannot hold a {args.role} key "
                f"(allowed: {', '.join(allowed)})",
            )
        _, token = await create_api_client(
            session=session,
            actor=actor,
            crypto=crypto_from(settings),
            organisation_id=org.id,
            role=args.role,
            name=args.name,
        )
        return token

    token = run_unit("create-client", url, work)
    print(token, flush=True)
    print(STORE_IT, file=sys.stderr)
