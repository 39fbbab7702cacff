"""Per-client token buckets in PostgreSQL: one statement per request, shared by every replica.

The bucket of a client holds ``tokens`` as of ``updated_at``. Each request refills it for the
time since (by the injected clock, never the database's), caps it at the burst, and takes one
token if there is one. The row lock of the upsert serialises a client's concurrent requests,
so two replicas cannot both spend the last token.
"""

from __future__ import annotations

import math
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.config import RateLimit, Settings
from service.kit.errors import TooManyRequests

# ``available`` is the bucket refilled up to now and capped at the burst. A clock that reads
# earlier than the last request (another replica's) refills nothing rather than draining.
_AVAILABLE = (
    "LEAST(CAST(:burst AS float8), b.tokens + GREATEST(0, "
    "EXTRACT(EPOCH FROM (CAST(:now AS timestamptz) - b.updated_at))::float8) * CAST(:rate AS float8))"
)
_TAKE_TOKEN = text(
    f"""
    INSERT INTO rate_limit_buckets AS b (client_id, tokens, updated_at, allowed)
    VALUES (:client_id, CAST(:burst AS float8) - 1, CAST(:now AS timestamptz), true)
    ON CONFLICT (client_id) DO UPDATE SET
        tokens = CASE WHEN {_AVAILABLE} >= 1 THEN {_AVAILABLE} - 1 ELSE {_AVAILABLE} END,
        updated_at = GREATEST(b.updated_at, CAST(:now AS timestamptz)),
        allowed = {_AVAILABLE} >= 1
    RETURNING tokens, allowed
    """
)


def limit_for(settings: Settings, role: str) -> RateLimit:
    """The bucket of a client of ``role``: its role's if the settings name one, else the default."""
    return settings.rate_limit_by_role.get(role) or RateLimit(
        burst=settings.rate_limit_burst, per_second=settings.rate_limit_per_second
    )


async def take_token(*, session: AsyncSession, client_id: int, now: datetime, limit: RateLimit) -> None:
    """Spend one of the client's tokens, or raise 429 ``rate_limited`` saying when one is back."""
    row = (
        await session.execute(
            _TAKE_TOKEN,
            {"client_id": client_id, "now": now, "burst": limit.burst, "rate": limit.per_second},
        )
    ).one()
    if row.allowed:
        return
    wait = math.ceil((1 - row.tokens) / limit.per_second)
    raise TooManyRequests(
        "rate_limited",
        f"Too many requests from this API client: {limit.burst} at once, "
        f"then {limit.per_second:g} per second.",
        retry_after=max(1, wait),
    )
