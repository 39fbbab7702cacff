"""Who is acting, and when: passed from the router (or a loop) into every service call."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Caller:
    """An authenticated API client."""

    client_id: int
    org_id: int
    role: str
    org_kind: str
    org_name: str
    region_code: str


@dataclass(frozen=True)
class Actor:
    """The party a change is recorded against, with the one clock reading of its unit of work."""

    now: datetime
    label: str
    client_id: int | None = None
    org_id: int | None = None
    request_id: str | None = None

    def __post_init__(self) -> None:
        # In UTC whatever zone the clock reads in, so an instant taken from it reaches an answer
        # in the one time format (docs/webhooks.md, "Time"); rules take local dates explicitly.
        object.__setattr__(self, "now", self.now.astimezone(UTC))

    @classmethod
    def for_caller(cls, caller: Caller, *, now: datetime, request_id: str | None) -> Actor:
        return cls(
            now=now,
            label=caller.role,
            client_id=caller.client_id,
            org_id=caller.org_id,
            request_id=request_id,
        )

    @classmethod
    def system(cls, name: str, *, now: datetime) -> Actor:
        return cls(now=now, label=name)
