"""Running one pass every interval until asked to stop: the shape of every polling loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from service.kit.errors import log_failure
from service.kit.metrics import LOOP_ERRORS

log = structlog.get_logger("slotpool.loops")


async def every(
    interval: float, work: Callable[[], Awaitable[object]], *, name: str, stop: asyncio.Event
) -> None:
    """Run ``work`` now and then every ``interval`` seconds until ``stop`` is set.

    A failed pass is counted and logged; the next one runs on schedule, and since
    every pass reads its state from the database it catches up on what was missed.
    """
    while not stop.is_set():
        try:
            await work()
        except Exception as exc:
            LOOP_ERRORS.labels(name).inc()
            log_failure(log, "loop pass failed; retrying next interval", exc, loop=name)
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
