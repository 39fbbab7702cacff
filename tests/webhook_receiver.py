"""A real HTTP receiver on loopback for webhook tests: records requests, answers as told.

It runs ``http.server`` in a thread, so it serves while the test's event loop
runs the dispatcher. ``answer`` is what it does next: an HTTP status to send,
or "stall" to hold the request past the dispatcher's timeout. ``stop()`` and
``start()`` take it down and bring it back on the same port.
"""

from __future__ import annotations

import threading
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

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.requests: list[Received] = []
        self.answer: int | str = 200
        self.release = threading.Event()
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
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                answer = receiver.answer
                with receiver._lock:
                    receiver.requests.append(
                        Received(path=self.path, headers=headers, body=body, at=receiver.clock.now())
                    )
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
