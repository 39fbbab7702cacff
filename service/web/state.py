"""What the lifespan owns and every request shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

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


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.slotpool
    return state


State = Annotated[AppState, Depends(get_state)]
