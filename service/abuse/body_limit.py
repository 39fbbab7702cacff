"""Refuse request bodies over a size limit before anything parses them (413 payload_too_large).

A declared Content-Length over the limit is refused before a byte is read. A body without
one (chunked, or streamed) is counted as it arrives; once it passes the limit the app's
reads fail, whatever answer the app was making is dropped, and the caller gets the 413.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.kit.errors import problem_response


class BodyTooLarge(Exception):
    """Raised into the app's body read once the body passes the limit."""


class BodyLimit:
    """Pure ASGI middleware bounding every HTTP request body to ``max_bytes``."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            413,
            "payload_too_large",
            f"The request body is larger than {self.max_bytes} bytes; split it into smaller requests.",
            Request(scope),
            limit_bytes=self.max_bytes,
        )
        # The unread rest of the body is not wanted: the server closes the connection.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0  # the server refuses a malformed length itself
                if declared > self.max_bytes:
                    await self.refuse(scope, receive, send)
                    return

        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the app's answer to a body it could not read; the 413 replaces it
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            # Whatever the app made of the failed read (BodyTooLarge or an error wrapping it).
            if not exceeded:
                raise
        if exceeded and not started:
            await self.refuse(scope, receive, send)
