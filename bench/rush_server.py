"""Bench-only launcher: the slotpool app behind uvicorn, with a clock that stands still.

``booking_rush.py`` starts this in a subprocess so the server and the load
generator do not share an event loop (or a GIL). The service code is not
touched: this builds ``create_app`` with a ``ManualClock`` fixed at ``--now``,
so the pool window the benchmark seeded stays open however long the run takes.

It is served by ``serving.py`` exactly as the bare baseline (``bare_server.py``) is:
uvicorn on 127.0.0.1, a free port printed on stdout, ``--workers`` processes, and a
graceful stop on SIGTERM/SIGINT, at EOF on stdin, or after ``--max-seconds``.

    python bench/rush_server.py --database-url URL --now 2026-03-02T09:00:00+08:00 [--workers N]
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi import FastAPI

from service.app import create_app
from service.kit.clock import ManualClock
from service.kit.config import Settings
from service.kit.logging import configure_logging


def make_app() -> FastAPI:
    # The rush plays many family-doctor apps with one key while the clock stands still, so a
    # bucket would never refill: the per-client rate limit is set out of reach (it still runs).
    settings = Settings(
        run_loops=False,
        log_json=False,
        log_level="WARNING",
        db_pool_size=int(os.environ["BENCH_POOL_SIZE"]),
        rate_limit_burst=1_000_000,
    )
    configure_logging(settings.log_level, json=False)
    now = datetime.fromisoformat(os.environ["BENCH_NOW"])
    return create_app(
        settings, database_url=os.environ["BENCH_DATABASE_URL"], clock=ManualClock(now), run_loops=False
    )


def main() -> None:
    from serving import serve_factory

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--now", required=True, help="ISO instant with a UTC offset")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--pool-size", type=int, default=20, help="database connections per worker")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args()
    if datetime.fromisoformat(args.now).tzinfo is None:
        parser.error("--now needs a UTC offset")
    serve_factory(
        "rush_server:make_app",
        workers=args.workers,
        max_seconds=args.max_seconds,
        env={
            "BENCH_DATABASE_URL": args.database_url,
            "BENCH_NOW": args.now,
            "BENCH_POOL_SIZE": str(args.pool_size),
        },
    )


if __name__ == "__main__":
    main()
