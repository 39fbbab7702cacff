"""Bench-only launcher: the slotpool app behind uvicorn, with a clock that stands still.

``booking_rush.py`` starts this in a subprocess so the server and the load
generator do not share an event loop (or a GIL). The service code is not
touched: this builds ``create_app`` with a ``ManualClock`` fixed at ``--now``,
so the pool window the benchmark seeded stays open however long the run takes.

It binds 127.0.0.1 on a free port, prints that port on stdout once it is
listening, and stops (gracefully) on SIGTERM/SIGINT, when its stdin reaches
EOF (the parent went away), or after ``--max-seconds``.

    python bench/rush_server.py --database-url URL --now 2026-03-02T09:00:00+08:00
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvicorn

from service.app import create_app
from service.kit.clock import ManualClock
from service.kit.config import Settings
from service.kit.logging import configure_logging


def _watch_stdin(server: uvicorn.Server, loop: asyncio.AbstractEventLoop) -> None:
    """Stop the server when the parent closes our stdin (or dies)."""
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, ValueError):
        pass
    loop.call_soon_threadsafe(setattr, server, "should_exit", True)


async def serve(database_url: str, now: datetime, pool_size: int, max_seconds: float) -> int:
    # The rush plays many family-doctor apps with one key while the clock stands still, so a
    # bucket would never refill: the per-client rate limit is set out of reach (it still runs).
    settings = Settings(
        run_loops=False,
        log_json=False,
        log_level="WARNING",
        db_pool_size=pool_size,
        rate_limit_burst=1_000_000,
    )
    configure_logging(settings.log_level, json=False)
    app = create_app(settings, database_url=database_url, clock=ManualClock(now), run_loops=False)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            return 1
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    threading.Thread(target=_watch_stdin, args=(server, loop), daemon=True).start()
    loop.call_later(max_seconds, setattr, server, "should_exit", True)
    await task
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--now", required=True, help="ISO instant with a UTC offset")
    parser.add_argument("--pool-size", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args()
    now = datetime.fromisoformat(args.now)
    if now.tzinfo is None:
        parser.error("--now needs a UTC offset")
    sys.exit(asyncio.run(serve(args.database_url, now, args.pool_size, args.max_seconds)))


if __name__ == "__main__":
    main()
