"""The sandbox clock as the API shows it and the move an integrator asks for."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import model_validator

from service.kit.bounds import Instant
from service.kit.schemas import ApiModel


class ClockMoveIn(ApiModel):
    """Exactly one of ``now`` (an instant with its offset) and ``advance`` (ISO 8601, e.g. PT25H)."""

    now: Instant | None = None
    advance: timedelta | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ClockMoveIn:
        if (self.now is None) == (self.advance is None):
            raise ValueError("give exactly one of 'now' and 'advance'")
        return self


class ClockOut(ApiModel):
    """What time it is in the sandbox, and how far ahead of the wall clock that is."""

    now: datetime
    local_date: str
    wall_now: datetime
    offset_seconds: float
    moved_at: datetime | None
