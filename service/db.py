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

import structlog
from sqlalchemy import MetaData
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from service.errors import Conflict

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
            connect_args={"server_settings": {"timezone": "UTC", "application_name": "slotpool"}},
        )
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]], *, attempts: int = 3) -> T:
        """Run ``work`` in one transaction and commit it; retry serialization failures."""
        for attempt in range(1, attempts + 1):
            async with self.sessionmaker() as session:
                try:
                    result = await work(session)
                    await session.commit()
                    return result
                except DBAPIError as exc:
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
        raise AssertionError("unreachable")

    async def dispose(self) -> None:
        await self.engine.dispose()


def advisory_key(*parts: object) -> int:
    """A signed 64-bit key for ``pg_advisory_xact_lock`` naming what it serialises, e.g.
    ``advisory_key("limits", "doctor", 7)``. Every transaction-level advisory lock of the
    service takes its key from here, so two uses never collide by accident."""
    name = ":".join(["slotpool", *(str(p) for p in parts)])
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)
