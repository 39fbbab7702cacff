"""What a database driver error means: its SQLSTATE, its constraint, and whether the server is away.

Below both ``service.kit.db`` (which retries and maps lock timeouts) and ``service.kit.errors`` (which
answers 503 for an unreachable database): neither imports the other for it.
"""

from __future__ import annotations

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

RETRYABLE = {"40001", "40P01"}  # serialization_failure, deadlock_detected
LOCK_NOT_AVAILABLE = "55P03"


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
    (service/kit/errors.py) and loops log one line instead of a traceback. It follows the chain
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
