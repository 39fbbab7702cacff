"""JSON logs through structlog: one access line per request, the request ID in every line.

No line carries personal data: the access line names the route template
(``/v1/referrals/{reference}``), never the path or the query string, and the
only caller detail is the API client's numeric id.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from typing import Any, TextIO

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.kit.metrics import HTTP_REQUESTS

access_log = structlog.get_logger("slotpool.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def configure_logging(level: str = "INFO", *, json: bool = True, stream: TextIO | None = None) -> None:
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def request_id_of(scope: Scope) -> str:
    """The caller's X-Request-ID if it is a plain token, otherwise a fresh one."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            incoming: str = value.decode("latin-1")
            if _REQUEST_ID.match(incoming):
                return incoming
    return uuid.uuid4().hex


class RequestContext:
    """The outermost layer of the app: request ID, access line, latency metric.

    It wraps Starlette's ServerErrorMiddleware too, so the request ID is bound
    while every handler runs, the 500 handler included, and the access line
    reports the status the caller really got. Bindings are reset afterwards.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        # Request.state reads this dict: problem bodies and audit entries carry the same ID.
        scope.setdefault("state", {})["request_id"] = request_id
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        answered = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Starlette re-raises a bug after its handler has logged it and sent the 500; the
            # server would then close the connection. Once the answer is complete there is
            # nothing left to tell the server, so the caller's keep-alive connection survives.
            if not answered:
                raise
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            HTTP_REQUESTS.labels(scope["method"], route, str(status)).observe(elapsed)
            fields: dict[str, Any] = {
                "method": scope["method"],
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 1),
            }
            caller = scope.get("state", {}).get("caller")
            if caller is not None:
                fields["client_id"] = caller.client_id
            access_log.info("request", **fields)
            structlog.contextvars.reset_contextvars(**tokens)
            # A client ID bound by authentication in this task ends with the request too.
            structlog.contextvars.unbind_contextvars("client_id")
