"""How far behind delivery is: the figures behind the outbox's gauges (docs/operations.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# Per endpoint, each figure is a range of the index (endpoint_id, status, id): the queue's head
# is its first pending row, and no statement reads a delivered row. Endpoints are few (one or a
# few per hospital); deliveries are many and mostly delivered.
_BACKLOG = text(
    """
    SELECT coalesce(sum(q.pending), 0) AS pending, min(q.head_at) AS oldest, coalesce(sum(q.dead), 0) AS dead
    FROM webhook_endpoints AS e
    CROSS JOIN LATERAL (
        SELECT (SELECT count(*) FROM webhook_deliveries d
                WHERE d.endpoint_id = e.id AND d.status = 'pending') AS pending,
               (SELECT d.created_at FROM webhook_deliveries d
                WHERE d.endpoint_id = e.id AND d.status = 'pending' ORDER BY d.id LIMIT 1) AS head_at,
               (SELECT count(*) FROM webhook_deliveries d
                WHERE d.endpoint_id = e.id AND d.status = 'dead') AS dead
    ) AS q
    """
)


@dataclass(frozen=True)
class Backlog:
    pending: int
    oldest_pending_age_seconds: float
    dead: int


async def read_backlog(*, session: AsyncSession, now: datetime) -> Backlog:
    """Pending deliveries, the age of the oldest one (the head of the longest-stuck queue; a
    replayed dead letter counts from its event's time), and dead letters not replayed."""
    row = (await session.execute(_BACKLOG)).one()
    age = 0.0 if row.oldest is None else max(0.0, (now - row.oldest).total_seconds())
    return Backlog(pending=int(row.pending), oldest_pending_age_seconds=age, dead=int(row.dead))
