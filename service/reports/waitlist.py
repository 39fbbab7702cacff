"""Waiting-list figures for the compliance report: unmet demand per hospital and department.

A current figure, not a per-period one: how many residents wait now is the state of the list at
``generated_at``, read live (the summary of closed days holds slot counts only, docs/reports.md).
Next to it, per department, the entries whose date range ended inside the report's range
without a slot: demand the pool did not meet.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import BigInteger, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.clock import local_date

_WAITING_LISTS = text(
    """
    SELECT e.hospital_id, o.name AS hospital_name, e.department_id, d.code AS department_code,
           d.name AS department_name,
           count(*) FILTER (WHERE e.status = 'waiting' AND e.to_date >= :today
                            AND e.from_date <= :date_to AND e.to_date >= :date_from) AS waiting,
           count(*) FILTER (WHERE e.status = 'waiting' AND e.to_date >= :today AND e.urgent
                            AND e.from_date <= :date_to AND e.to_date >= :date_from) AS urgent,
           count(*) FILTER (WHERE e.status = 'expired' AND e.to_date BETWEEN :date_from AND :date_to)
               AS expired_unmet
    FROM waitlist_entries e
    JOIN organisations o ON o.id = e.hospital_id
    JOIN departments d ON d.id = e.department_id
    WHERE e.hospital_id = ANY(:hospital_ids) AND e.resource_kind = :resource_kind
      AND e.to_date >= :date_from AND e.from_date <= :date_to
      AND e.status IN ('waiting', 'expired')
    GROUP BY e.hospital_id, o.name, e.department_id, d.code, d.name
    HAVING count(*) FILTER (WHERE e.status = 'waiting' AND e.to_date >= :today
                            AND e.from_date <= :date_to AND e.to_date >= :date_from) > 0
        OR count(*) FILTER (WHERE e.status = 'expired' AND e.to_date BETWEEN :date_from AND :date_to) > 0
    ORDER BY e.hospital_id, d.code
    """
).bindparams(bindparam("hospital_ids", type_=ARRAY(BigInteger)))


async def waiting_lists(
    *,
    session: AsyncSession,
    hospital_ids: list[int],
    resource_kind: str,
    date_from: date,
    date_to: date,
    now: datetime,
) -> list[dict[str, Any]]:
    """Per hospital and department of the scope: residents waiting now for a day in the range
    (``urgent`` of them marked urgent), and entries that expired in the range without a slot."""
    if not hospital_ids:
        return []
    rows = await session.execute(
        _WAITING_LISTS,
        {
            "hospital_ids": hospital_ids,
            "resource_kind": resource_kind,
            "date_from": date_from,
            "date_to": date_to,
            "today": local_date(now),
        },
    )
    return [
        {
            "hospital": {"id": r.hospital_id, "name": r.hospital_name},
            "department": {"id": r.department_id, "code": r.department_code, "name": r.department_name},
            "waiting": r.waiting,
            "urgent": r.urgent,
            "expired_unmet": r.expired_unmet,
        }
        for r in rows
    ]
