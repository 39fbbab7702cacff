"""Engine, sessions and the one place a transaction commits.

Services never commit: they take a keyword-only ``session`` and ``flush()``.
``Database.run`` opens a session, runs the work, commits, and retries the
whole unit on serialization failures and deadlocks. Routes call it, so the
commit happens before the response is built.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import asyncpg
import structlog
from sqlalchemy import MetaData, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from service.kit.dberrors import LOCK_NOT_AVAILABLE, RETRYABLE, database_unavailable, sqlstate
from service.kit.errors import Conflict, DatabaseUnavailable, Problem

T = TypeVar("T")
log = structlog.get_logger("slotpool.db")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def asyncpg_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and point SQLAlchemy at asyncpg."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("DATABASE_URL must be a postgresql:// URL")


class Database:
    """The engine and session factory, owned by the app's lifespan or a worker."""

    def __init__(self, url: str, *, pool_size: int = 10, behind_pgbouncer: bool = False) -> None:
        # Behind PgBouncer's transaction pooling a server connection serves other clients
        # between two transactions, so nothing prepared may be cached on it: no statement
        # cache in asyncpg or SQLAlchemy, and a fresh name for every prepared statement.
        pgbouncer: dict[str, Any] = (
            {"statement_cache_size": 0, "prepared_statement_name_func": _statement_name}
            if behind_pgbouncer
            else {}
        )
        self.engine: AsyncEngine = create_async_engine(
            asyncpg_url(url) + ("?prepared_statement_cache_size=0" if behind_pgbouncer else ""),
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            # A bug's traceback must not carry the values bound to its statement: ID-number
            # indexes, names and codes would reach the log.
            hide_parameters=True,
            # A database that does not answer is a 503 within seconds, not a request left hanging.
            pool_timeout=10,
            connect_args={
                "timeout": 10,
                "server_settings": {"timezone": "UTC", "application_name": "slotpool"},
                **pgbouncer,
            },
        )
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    async def run(
        self,
        work: Callable[[AsyncSession], Awaitable[T]],
        *,
        attempts: int = 3,
        session: AsyncSession | None = None,
        keep_open: bool = False,
    ) -> T:
        """Run ``work`` in one transaction and commit it; retry serialization failures.

        ``session`` is used for the first attempt instead of a new one (a request's unit of
        work continues the session that authenticated it); with ``keep_open`` it is left open
        after a successful commit, holding no connection, for the next transaction.
        A database that cannot be reached raises ``DatabaseUnavailable`` (503), whatever
        layer noticed it first.
        """
        for attempt in range(1, attempts + 1):
            current = session if attempt == 1 and session is not None else self.sessionmaker()
            close = True
            try:
                try:
                    result = await work(current)
                    await current.commit()
                except DBAPIError as exc:
                    if not database_unavailable(exc):
                        await current.rollback()
                    state = sqlstate(exc)
                    if state in RETRYABLE and attempt < attempts:
                        log.info("retrying transaction", sqlstate=state, attempt=attempt)
                        continue
                    if state == LOCK_NOT_AVAILABLE:
                        raise busy() from exc
                    raise
                else:
                    close = not (keep_open and current is session)
                    return result
                finally:
                    if close:
                        await current.close()
            except Problem:
                raise
            except Exception as exc:
                if database_unavailable(exc):
                    raise DatabaseUnavailable() from exc
                raise
        raise AssertionError("unreachable")

    async def dispose(self) -> None:
        await self.engine.dispose()


def _statement_name() -> str:
    return f"__slotpool_{uuid.uuid4().hex}__"


def busy() -> Conflict:
    """409 ``busy``: a row or advisory lock was not granted within ``lock_timeout``."""
    return Conflict("busy", "The resource is locked by another request; retry.", retry_after=1)


def advisory_key(*parts: object) -> int:
    """A signed 64-bit key for ``pg_advisory_xact_lock`` naming what it serialises, e.g.
    ``advisory_key("limits", "doctor", 7)``. Every transaction-level advisory lock of the
    service takes its key from here, so two uses never collide by accident."""
    name = ":".join(["slotpool", *(str(p) for p in parts)])
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


class Driver:
    """The unit's own connection, spoken to directly for set-based work (arrays and COPY).

    A statement through SQLAlchemy costs a few hundred microseconds of Python and every row it
    returns becomes a ``Row``; a push of 10,000 slots writes and reads them in a handful of
    statements here instead. It runs in the session's transaction, and a database error is
    raised as SQLAlchemy's ``DBAPIError`` (parameters hidden), so ``Database.run`` retries
    deadlocks and answers lock timeouts as for any other statement.
    """

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        try:
            rows: list[asyncpg.Record] = await self.connection.fetch(sql, *args)
        except asyncpg.PostgresError as exc:
            raise DBAPIError(sql, None, exc, hide_parameters=True) from exc
        return rows

    async def execute(self, sql: str, *args: Any) -> None:
        try:
            await self.connection.execute(sql, *args)
        except asyncpg.PostgresError as exc:
            raise DBAPIError(sql, None, exc, hide_parameters=True) from exc

    async def copy(self, table: str, columns: Sequence[str], records: Iterable[Sequence[Any]]) -> None:
        """``COPY table (columns) FROM STDIN``, binary: rows are stored in the order given."""
        try:
            await self.connection.copy_records_to_table(table, records=records, columns=list(columns))
        except asyncpg.PostgresError as exc:
            raise DBAPIError(f"COPY {table}", None, exc, hide_parameters=True) from exc


async def driver(session: AsyncSession) -> Driver:
    """The session's connection as a ``Driver``, inside the session's transaction.

    Pending ORM changes are flushed first, so what the driver reads and writes follows them.
    """
    await session.flush()
    connection = await session.connection()
    raw = (await connection.get_raw_connection()).driver_connection
    assert isinstance(raw, asyncpg.Connection)
    if not raw.is_in_transaction():
        # SQLAlchemy opens the driver's transaction with its first statement.
        await connection.execute(select(1))
    assert raw.is_in_transaction()
    return Driver(raw)
