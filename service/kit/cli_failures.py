"""How the ``slotpool`` command fails: one or two lines on stderr, never a value, exit status 1.

Settings hold secrets (the keys, the pepper, the password in DATABASE_URL), and
pydantic's own messages repeat the offending input, so errors are rendered here:
the variable's name and what is wrong with it. As a second guard, every line is
scrubbed of the values of the secret variables. ``--debug`` adds the traceback.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn
from urllib.parse import unquote, urlsplit

from pydantic import ValidationError

from service.kit.config import env_name
from service.kit.errors import Problem

SECRET_VARIABLES = (
    "DATABASE_URL",
    "SLOTPOOL_DATABASE_URL",
    "SLOTPOOL_MIGRATION_DATABASE_URL",
    "SLOTPOOL_DATA_KEY",
    "SLOTPOOL_INDEX_KEY",
    "SLOTPOOL_API_KEY_PEPPER",
)
DEBUG_HINT = "run with --debug for the traceback"


class StartupError(Exception):
    """A refusal to start that the operator fixes: ``message``, then an optional ``hint`` line."""

    command: str | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class CommandRefused(StartupError):
    """A command's own refusal (``slotpool <command>: …``), e.g. an unknown organisation code."""

    def __init__(self, command: str, message: str) -> None:
        super().__init__(message)
        self.command = command


def _secret_values() -> list[str]:
    values: list[str] = []
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if not value:
            continue
        values.append(value)
        try:
            password = urlsplit(value).password
        except ValueError:
            password = None
        if password:
            values.extend({password, unquote(password)})
    # Longest first, so a URL is replaced whole before its password is.
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


def redact(text: str) -> str:
    for value in _secret_values():
        text = text.replace(value, "[redacted]")
    return text


def _settings_lines(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        message = str(error.get("msg", "is not valid")).removeprefix("Value error, ")
        loc = error.get("loc", ())
        if loc:
            problems.append(f"{env_name(str(loc[0]))}: {message}")
        else:
            problems.append(message)
    return [f"invalid configuration: {'; '.join(problems)}"]


def _database_cause(exc: BaseException) -> BaseException | None:
    """The driver's or the network's error inside whatever SQLAlchemy or Alembic wrapped it in."""
    import asyncpg

    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, asyncpg.PostgresError | asyncpg.InterfaceError | OSError):
            return current
        todo.extend([getattr(current, "orig", None), current.__cause__, current.__context__])
    return None


def _database_lines(cause: BaseException) -> list[str]:
    import asyncpg

    where = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "the database"
    if isinstance(cause, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        return [f"the database refused the login: {cause}", f"check the user and password in {where}"]
    if isinstance(cause, asyncpg.InvalidCatalogNameError):
        return [f"the database does not exist: {cause}", f"check the database name in {where}"]
    if isinstance(cause, asyncpg.PostgresError):
        return [f"database error ({type(cause).__name__}): {cause}", DEBUG_HINT]
    if isinstance(cause, socket.gaierror):
        return [f"cannot resolve the database host: {cause.strerror}", f"check the host in {where}"]
    if isinstance(cause, OSError | TimeoutError):
        reason = cause.strerror or str(cause) or type(cause).__name__
        return [f"cannot reach the database: {reason}", f"check {where} and that PostgreSQL is running"]
    return [f"database error ({type(cause).__name__}): {cause}", DEBUG_HINT]


def describe(exc: BaseException) -> list[str]:
    """One or two lines saying what failed and what to do; never a setting's value."""
    if isinstance(exc, StartupError):
        return [exc.message, *([exc.hint] if exc.hint else [])]
    if isinstance(exc, ValidationError):
        return _settings_lines(exc)
    if isinstance(exc, Problem):
        return [exc.detail]
    cause = _database_cause(exc)
    if cause is not None and not isinstance(cause, PermissionError | FileNotFoundError):
        return _database_lines(cause)
    first = (str(exc).strip().splitlines() or [""])[0]
    return [f"{type(exc).__name__}: {first}" if first else type(exc).__name__, DEBUG_HINT]


def fail(exc: BaseException, *, debug: bool) -> NoReturn:
    if debug:
        print(redact("".join(traceback.format_exception(exc))), end="", file=sys.stderr)
    command = getattr(exc, "command", None)
    prefix = f"slotpool {command}: " if command else "slotpool: "
    for line in describe(exc)[:2]:
        print(f"{prefix}{redact(line)}", file=sys.stderr)
    raise SystemExit(1)


@contextmanager
def reported(*, debug: bool) -> Iterator[None]:
    """Turn any failure inside into ``fail``'s lines; Ctrl-C is a quiet exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as exc:
        fail(exc, debug=debug)


def listen_on(host: str, port: int, *, what: str) -> socket.socket:
    """Bind and listen on ``host:port`` now, and keep it: the server is handed this socket, so a
    port taken by another process is refused before anything is migrated, seeded or printed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"cannot listen on {host}:{port} ({what}): {exc.strerror or exc}",
            "stop the process that uses it or choose another port",
        ) from exc
    return sock


def ensure_port_free(host: str, port: int, *, what: str) -> None:
    """Refuse early, before migrations, when another process listens on ``host:port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {host}:{port} ({what}): {exc.strerror or exc}",
                "stop the process that uses it or choose another port",
            ) from exc
