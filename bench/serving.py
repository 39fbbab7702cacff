"""Bench-only: serve an ASGI app factory the way ``slotpool serve`` does, in a subprocess.

The service (``rush_server.py``) and the bare baseline (``bare_server.py``) are both
started through ``serve_factory``, so they differ only in the app: same uvicorn, same
worker count, same host, same access log (off), same lifetime rules.

The factory's settings travel in environment variables, because with ``--workers`` > 1
uvicorn spawns fresh worker processes that import the factory by name.

The launcher picks a free port, prints it on stdout, and serves until SIGTERM/SIGINT,
until its stdin reaches EOF (the parent went away), or ``max_seconds``. The parent waits
for the port to accept connections before it sends anything.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from pathlib import Path

import uvicorn

BENCH = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _stop_when_orphaned(max_seconds: float) -> None:
    """SIGINT ourselves when stdin closes or the time is up; uvicorn then shuts down gracefully."""

    def watch_stdin() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch_stdin, daemon=True).start()
    timer = threading.Timer(max_seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.daemon = True
    timer.start()


def serve_factory(factory: str, *, workers: int, max_seconds: float, env: dict[str, str]) -> None:
    """Serve ``module:function`` (a module in bench/) on 127.0.0.1 with ``workers`` processes."""
    os.environ.update(env)
    port = free_port()
    print(port, flush=True)
    _stop_when_orphaned(max_seconds)
    uvicorn.run(
        factory,
        factory=True,
        app_dir=str(BENCH),
        host="127.0.0.1",
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
