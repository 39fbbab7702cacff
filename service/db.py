"""Engine, sessions and the one place a transaction commits.

Services never commit: they take a keyword-only ``session`` and ``flush()``.
``Database.run`` opens a session, runs the work, commits, and retries the
whole unit on serialization failures and deadlocks. Routes call it, so the
commit happens before the response is built.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import structlog
from sqlalchemy import MetaData
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from service.errors import Conflict, DatabaseUnavailable, Problem

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


RETRYABLE = {"40001", "40P01"}  # serialization_failure, deadlock_detected
LOCK_NOT_AVAILABLE = "55P03"
UNIQUE_VIOLATION = "23505"


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE behind a SQLAlchemy error, if any."""
    orig = getattr(exc, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if code:
            return str(code)
    return None


# The server is going away or refuses connections: admin_shutdown, crash_shutdown,
# cannot_connect_now, and class 08 (connection_exception and its kinds).
UNAVAILABLE_SQLSTATES = {"57P01", "57P02", "57P03", "08000", "08001", "08003", "08004", "08006"}
_UNAVAILABLE_TYPES: tuple[type[BaseException], ...] = (
    PoolTimeout,  # every pooled connection busy for pool_timeout
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
)


def _raised_in_driver(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module.startswith(("asyncpg", "sqlalchemy")):
            return True
        tb = tb.tb_next
    return False


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot be reached (rather than a bug or a refusal).

    The one place that decides it: requests answer 503 ``database_unavailable`` for these
    (service/errors.py) and loops log one line instead of a traceback. It follows the chain
    SQLAlchemy and asyncpg build (``orig``, ``__cause__``, ``__context__``).
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, _UNAVAILABLE_TYPES):
            return True
        # Refused, reset, no socket file, connect timeout (TimeoutError is an OSError): the
        # driver raises these unwrapped when connecting, so an OSError counts when it came
        # out of the driver, and not when, say, a file the service reads is missing.
        if isinstance(current, OSError) and _raised_in_driver(current):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if getattr(current, "sqlstate", None) in UNAVAILABLE_SQLSTATES:
            return True
        todo += [getattr(current, "orig", None), current.__cause__, current.__context__]
    return False


def constraint_name(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None)):
        name = getattr(candidate, "constraint_name", None)
        if name:
            return str(name)
    return None


def asyncpg_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and point SQLAlchemy at asyncpg."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("DATABASE_URL must be a postgresql:// URL")


class Database:
    """The engine and session factory, owned by the app's lifespan or a worker."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.engine: AsyncEngine = create_async_engine(
            asyncpg_url(url),
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
            },
        )
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]], *, attempts: int = 3) -> T:
        """Run ``work`` in one transaction and commit it; retry serialization failures.

        A database that cannot be reached raises ``DatabaseUnavailable`` (503), whatever
        layer noticed it first.
        """
        for attempt in range(1, attempts + 1):
            try:
                async with self.sessionmaker() as session:
                    try:
                        result = await work(session)
                        await session.commit()
                        return result
                    except DBAPIError as exc:
                        if not database_unavailable(exc):
                            await session.rollback()
                        state = sqlstate(exc)
                        if state in RETRYABLE and attempt < attempts:
                            log.info("retrying transaction", sqlstate=state, attempt=attempt)
                            continue
                        if state == LOCK_NOT_AVAILABLE:
                            raise Conflict(
                                "busy", "The resource is locked by another request; retry.", retry_after=1
                            ) from exc
                        raise
            except Problem:
                raise
            except Exception as exc:
                if database_unavailable(exc):
                    raise DatabaseUnavailable() from exc
                raise
        raise AssertionError("unreachable")

    async def dispose(self) -> None:
        await self.engine.dispose()


def advisory_key(*parts: object) -> int:
    """A signed 64-bit key for ``pg_advisory_xact_lock`` naming what it serialises, e.g.
    ``advisory_key("limits", "doctor", 7)``. Every transaction-level advisory lock of the
    service takes its key from here, so two uses never collide by accident."""
    name = ":".join(["slotpool", *(str(p) for p in parts)])
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)
