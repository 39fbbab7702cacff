"""Domain errors carry an HTTP status and a stable code; one handler renders RFC 9457 problem+json."""

from __future__ import annotations

import traceback
from typing import Any

import asyncpg
import sqlalchemy.exc
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.kit.dberrors import database_unavailable, sqlstate

PROBLEM_JSON = "application/problem+json"
log = structlog.get_logger("slotpool.errors")


class Problem(Exception):
    """A refusal or failure the caller should see. ``code`` is stable and documented."""

    status = 400

    def __init__(self, code: str, detail: str, *, status: int | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        if status is not None:
            self.status = status
        # ``headers`` (a dict) goes into the response headers, not the body. ``retry_after``
        # (whole seconds) stays a body member and is also sent as Retry-After (RFC 9110 §10.2.3).
        self.headers: dict[str, str] = dict(extra.pop("headers", None) or {})
        retry_after = extra.get("retry_after")
        if retry_after is not None:
            extra["retry_after"] = max(1, int(retry_after))
            self.headers["Retry-After"] = str(extra["retry_after"])
        self.extra = extra


class Unauthorized(Problem):
    status = 401


class Forbidden(Problem):
    status = 403


class NotFound(Problem):
    status = 404


class Conflict(Problem):
    status = 409


class Unprocessable(Problem):
    status = 422


class TooManyRequests(Problem):
    status = 429


class DatabaseUnavailable(Problem):
    """The database cannot be reached or is shutting down: not the caller's fault, not a bug."""

    status = 503
    retry_after_seconds = 5

    def __init__(self, detail: str = "The database is unavailable; retry shortly.") -> None:
        super().__init__(
            "database_unavailable", detail, headers={"Retry-After": str(self.retry_after_seconds)}
        )


# The driver's errors: a bug among them is logged without its message (see log_failure).
DRIVER_ERRORS: tuple[type[Exception], ...] = (
    sqlalchemy.exc.DBAPIError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
# Exception types the database layer raises. Those that mean "unreachable" (service.kit.dberrors
# decides) answer 503 database_unavailable; the rest are bugs (500). Handled here rather than
# by the catch-all, which Starlette re-raises into the server's traceback log.
DATABASE_ERRORS: tuple[type[Exception], ...] = (*DRIVER_ERRORS, sqlalchemy.exc.TimeoutError, OSError)


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    412: "Precondition Failed",
    413: "Content Too Large",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def problem_body(status: int, code: str, detail: str, request: Request, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"urn:slotpool:problem:{code}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "code": code,
        "detail": detail,
        "instance": request.url.path,
    }
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    body.update(extra)
    return body


def problem_response(
    status: int,
    code: str,
    detail: str,
    request: Request,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        problem_body(status, code, detail, request, **extra),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers or None,
    )


def _unreachable(exc: BaseException) -> bool:
    return isinstance(exc, DatabaseUnavailable) or database_unavailable(exc)


def as_problem(exc: BaseException) -> Problem:
    """What the caller hears of a failure it did not cause: 503 while the database is away, else 500."""
    if isinstance(exc, DatabaseUnavailable):
        return exc
    if database_unavailable(exc):
        return DatabaseUnavailable()
    return Problem("internal_error", "An internal error occurred.", status=500)


def log_failure(logger: Any, event: str, exc: BaseException, **fields: Any) -> None:
    """Log a failure nobody asked for (a bug, or the database going away) once, without personal data.

    An unreachable database is one warning line. A database bug is logged by its frames, its
    SQLSTATE and its statement: PostgreSQL's own message quotes the offending value
    ('invalid input syntax …: "<name>"'). Any other bug is logged with its traceback.
    """
    if _unreachable(exc):
        cause = exc.__cause__ or exc
        logger.warning("database unavailable", during=event, error=type(cause).__name__, **fields)
    elif isinstance(exc, DRIVER_ERRORS):
        frames = "".join(traceback.format_tb(exc.__traceback__))
        statement = getattr(exc, "statement", None)
        logger.error(
            event, sqlstate=sqlstate(exc), exception=f"{frames}{type(exc).__name__} in: {statement}", **fields
        )
    else:
        logger.error(event, exc_info=exc, **fields)


def _route(request: Request) -> str:
    """The route template (``/v1/referrals/{reference}``): a raw path may carry a reference."""
    return str(getattr(request.scope.get("route"), "path", None) or "unmatched")


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.code, exc.detail, request, headers=exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        # Dates and instants out of their window (service/kit/bounds.py) have their own stable code.
        out_of_range = [".".join(map(str, e["loc"][1:])) for e in errors if e["type"] == "date_out_of_range"]
        if out_of_range:
            detail = f"Date or instant out of its window: {', '.join(out_of_range)}."
            return problem_response(
                422, "date_out_of_range", detail, request, field=out_of_range[0], errors=errors
            )
        return problem_response(
            422, "invalid_request", "The request does not match the schema.", request, errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's "error parsing the body" (a body that is not text in its declared
            # encoding): the same fault as a JSON syntax error, so the same answer.
            errors = [{"loc": ["body"], "msg": str(exc.detail), "type": "body_unreadable"}]
            return problem_response(
                422, "invalid_request", "The request body cannot be read.", request, errors=errors
            )
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return problem_response(exc.status_code, code, str(exc.detail), request)

    async def _failed(request: Request, exc: Exception) -> JSONResponse:
        # Not the caller's doing: 503 while the database is away, otherwise a bug (500) whose
        # details stay in the log and never reach the caller.
        log_failure(log, "unhandled error", exc, route=_route(request))
        problem = as_problem(exc)
        return problem_response(
            problem.status, problem.code, problem.detail, request, headers=problem.headers
        )

    # DatabaseUnavailable (raised by Database.run), the driver's own errors met elsewhere (a
    # read outside Database.run), and every other exception: one handler decides between them.
    handled: tuple[type[Exception], ...] = (DatabaseUnavailable, *DATABASE_ERRORS, Exception)
    for error_type in handled:
        app.add_exception_handler(error_type, _failed)
