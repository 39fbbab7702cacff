"""What the lifespan owns and every request shares."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.clock import Clock
from service.kit.config import Settings
from service.kit.crypto import Crypto
from service.kit.db import Database


@dataclass
class AppState:
    settings: Settings
    db: Database
    clock: Clock
    crypto: Crypto
    # The sandbox's (docs/sandbox.md): brings the clock to the database's time at the start of
    # every request, in its first transaction. None outside a sandbox: no query is added.
    clock_sync: Callable[[AsyncSession], Awaitable[None]] | None = None


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.slotpool
    return state


State = Annotated[AppState, Depends(get_state)]
