#!/usr/bin/env python3
"""A minimal slotpool webhook receiver for a hospital's HIS: Python standard library only.

    python3 receiver.py --port 8080 --secret whsec_...            # the secret shown at registration
    python3 receiver.py --port 8080 --secret whsec_new --secret whsec_old   # during a rotation

(or put the secrets, space-separated, in the WEBHOOK_SECRETS environment variable.)

For every POST it checks, in this order, and answers 401 if any check fails:

1. the three headers webhook-id, webhook-timestamp and webhook-signature are there;
2. webhook-timestamp is within --tolerance seconds (default 300) of this machine's clock,
   so a captured request cannot be replayed later;
3. one of the space-separated "v1,<base64>" signatures equals
   base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{raw body}")), where key is the
   base64-decoded part of a secret after "whsec_". Compared in constant time.

Then it deduplicates on webhook-id (slotpool delivers at least once: a retry or a replay
carries the same webhook-id), prints each new event as one JSON line on standard output,
and answers 204. A duplicate is answered 204 too, and not printed again. Put your own
handling where the event is printed; keep the seen webhook-ids in your database rather
than in memory, so that they survive a restart.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1_000_000
SEEN_LIMIT = 100_000
PRINT_LOCK = threading.Lock()


def secret_key(secret: str) -> bytes:
    """The HMAC key: the base64-decoded part after whsec_."""
    if not secret.startswith("whsec_"):
        raise ValueError("a slotpool webhook secret starts with whsec_")
    return base64.b64decode(secret[len("whsec_") :], validate=True)


def expected_signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def verify(
    keys: list[bytes], headers: dict[str, str], body: bytes, *, tolerance: int, now: float
) -> str | None:
    """None if the request is authentic and fresh; otherwise why not."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        return "missing webhook headers"
    try:
        sent_at = int(timestamp)
    except ValueError:
        return "bad webhook-timestamp"
    if abs(now - sent_at) > tolerance:
        return "webhook-timestamp outside the tolerance"
    expected = [expected_signature(key, msg_id, timestamp, body) for key in keys]
    for item in signatures.split(" "):
        version, _, value = item.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(value, validate=True)
        except ValueError:
            continue
        if any(hmac.compare_digest(given, e) for e in expected):
            return None
    return "no valid signature"


class Seen:
    """The webhook-ids already handled (bounded, oldest forgotten first)."""

    def __init__(self, limit: int = SEEN_LIMIT) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def add(self, msg_id: str) -> bool:
        """True if new."""
        with self._lock:
            if msg_id in self._ids:
                return False
            self._ids[msg_id] = None
            if len(self._ids) > self._limit:
                self._ids.popitem(last=False)
            return True


def make_handler(keys: list[bytes], tolerance: int, seen: Seen) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, reason: str = "") -> None:
            body = reason.encode()
            self.send_response(status)
            self.send_header("content-type", "text/plain; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("content-length", ""))
            except ValueError:
                return self._answer(411, "content-length required")
            if length < 0 or length > MAX_BODY:
                return self._answer(413, "body too large")
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            problem = verify(keys, headers, body, tolerance=tolerance, now=time.time())
            if problem is not None:
                print(f"refused: {problem}", file=sys.stderr, flush=True)
                return self._answer(401, problem)
            try:
                event = json.loads(body)
            except ValueError:
                return self._answer(400, "body is not JSON")
            msg_id = headers["webhook-id"]
            if seen.add(msg_id):
                line = {"webhook_id": msg_id, "type": event.get("type"), "timestamp": event.get("timestamp"),
                        "data": event.get("data")}  # fmt: skip
                with PRINT_LOCK:  # one whole line at a time: requests are handled in threads
                    sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
                    sys.stdout.flush()
            return self._answer(204)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Verify and print slotpool webhooks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--secret", action="append", default=[], help="whsec_... (repeat during a rotation)")
    parser.add_argument("--tolerance", type=int, default=300, help="seconds of clock difference accepted")
    args = parser.parse_args(argv)
    secrets = args.secret or os.environ.get("WEBHOOK_SECRETS", "").split()
    if not secrets:
        parser.error("give --secret or set WEBHOOK_SECRETS")
    keys = [secret_key(s) for s in secrets]
    server = ThreadingHTTPServer((args.host, args.port), make_handler(keys, args.tolerance, Seen()))
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
