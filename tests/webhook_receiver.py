"""A real HTTP receiver on loopback for webhook tests: records requests, answers as told.

It runs ``http.server`` in a thread, so it serves while the test's event loop
runs the dispatcher. ``answer`` is what it does next: an HTTP status to send,
or "stall" to hold the request past the dispatcher's timeout. It speaks HTTP/1.1
and keeps connections open, and records which connection each request came on.
``stop()`` takes it down, kept-alive connections included (a stopped receiver
answers nothing), and ``start()`` brings it back on the same port.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.kit.clock import Clock


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: datetime  # the test clock's reading when it arrived
    connection: tuple[str, int]  # the client's address and port: one per TCP connection

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.requests: list[Received] = []
        self.answer: int | str = 200
        self.on_request: Callable[[], None] | None = (
            None  # runs as each request arrives, before `answer` is read
        )
        self.release = threading.Event()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: every answer carries content-length
            disable_nagle_algorithm = True  # the status line and the body are two writes

            def setup(self) -> None:
                super().setup()
                with receiver._lock:
                    receiver._connections.add(self.connection)

            def finish(self) -> None:
                with receiver._lock:
                    receiver._connections.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    receiver.requests.append(
                        Received(
                            path=self.path,
                            headers=headers,
                            body=body,
                            at=receiver.clock.now(),
                            connection=self.client_address[:2],
                        )
                    )
                if receiver.on_request is not None:
                    receiver.on_request()
                answer = receiver.answer
                if answer == "stall":
                    receiver.release.wait(10)
                    answer = 200
                status = int(answer)
                reply = f"status {status} from the test receiver".encode()
                self.send_response(status)
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)
        self.release.clear()

    def ids(self, path: str | None = None) -> list[str]:
        with self._lock:
            return [r.webhook_id for r in self.requests if path is None or r.path == path]


class ClockedWebhook(Webhook):
    """standardwebhooks' verifier, with its timestamp tolerance taken at the test clock's ``now``.

    The library compares webhook-timestamp with the wall clock; the dispatcher signs with the
    injectable clock, which tests move by days. Everything else (header parsing, several
    signatures, HMAC, constant-time comparison) is the library's own.
    """

    def __init__(self, secret: str, now: datetime) -> None:
        super().__init__(secret)
        self._now = now

    def _Webhook__verify_timestamp(self, timestamp_header: str) -> datetime:
        try:
            timestamp = datetime.fromtimestamp(float(timestamp_header), tz=UTC)
        except ValueError as exc:
            raise WebhookVerificationError("Invalid Signature Headers") from exc
        if abs(timestamp - self._now) > timedelta(minutes=5):
            raise WebhookVerificationError("Message timestamp outside the tolerance")
        return timestamp


def verify(request: Received, secret: str) -> Any:
    """The body as JSON if ``secret`` signed the request (checked by standardwebhooks); raises otherwise."""
    return ClockedWebhook(secret, request.at).verify(request.body, request.headers)
