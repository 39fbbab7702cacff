"""The bare baseline of the booking rush: the smallest FastAPI + asyncpg app that claims a slot safely.

One request, one statement, in autocommit::

    UPDATE slots SET status = 'booked' WHERE id = $1 AND status = 'reserved' RETURNING id

201 when it claimed the slot, 409 when another request had. No authentication, no rule,
no referral, no event, no audit: this is the floor that the service's booking is measured
against. ``booking_rush.py`` starts it exactly as it starts the service (``serving.py``),
with the same worker count, and drives it with the same client code and attempt pattern.

    python bench/bare_server.py --database-url URL [--workers N] [--pool-size P]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

CLAIM = "UPDATE slots SET status = 'booked' WHERE id = $1 AND status = 'reserved' RETURNING id"


def make_app() -> FastAPI:
    url = os.environ["BENCH_DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")
    size = int(os.environ.get("BENCH_POOL_SIZE", "20"))
    pools: list[asyncpg.Pool] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pools.append(await asyncpg.create_pool(url, min_size=size, max_size=size))
        try:
            yield
        finally:
            await pools[0].close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/referrals")
    async def claim(request: Request) -> JSONResponse:
        body = await request.json()
        claimed = await pools[0].fetchval(CLAIM, int(body["slot_id"]))
        if claimed is None:
            return JSONResponse({"code": "slot_taken"}, status_code=409)
        return JSONResponse({"slot_id": claimed}, status_code=201)

    @app.get("/v1/pool/slots")
    async def warm() -> JSONResponse:
        await pools[0].fetchval("SELECT 1")
        return JSONResponse({"items": [], "next_cursor": None})

    return app


def main() -> None:
    from serving import serve_factory

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--pool-size", type=int, default=20, help="connections per worker")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args()
    serve_factory(
        "bare_server:make_app",
        workers=args.workers,
        max_seconds=args.max_seconds,
        env={"BENCH_DATABASE_URL": args.database_url, "BENCH_POOL_SIZE": str(args.pool_size)},
    )


if __name__ == "__main__":
    main()
