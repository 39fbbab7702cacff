"""Recording decisions in the append-only audit table."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.context import Actor
from service.models.audit import AuditEntry


async def record(
    *,
    session: AsyncSession,
    actor: Actor,
    action: str,
    code: str | None = None,
    hospital_id: int | None = None,
    resident_id: int | None = None,
    referral_id: int | None = None,
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one decision: who, which organisation, what, when, why, and the request ID."""
    session.add(
        AuditEntry(
            at=actor.now,
            request_id=actor.request_id,
            actor_client_id=actor.client_id,
            actor_org_id=actor.org_id,
            actor=actor.label,
            action=action,
            code=code,
            hospital_id=hospital_id,
            resident_id=resident_id,
            referral_id=referral_id,
            reason=reason,
            detail=detail or {},
        )
    )


async def record_read(
    *,
    session: AsyncSession,
    actor: Actor,
    action: str,
    reads: list[tuple[int | None, int]],
    hospital_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """One entry for a request that showed residents' personal data (R15).

    ``reads`` are (referral id or None, resident id) pairs. However many there are, the
    request leaves one entry; it names every resident in ``detail.resident_ids``, which the
    commission's query by resident searches, and fills the columns when there is just one.
    Showing nothing records nothing.
    """
    if not reads:
        return
    referral_ids = sorted({r for r, _ in reads if r is not None})
    resident_ids = sorted({p for _, p in reads})
    await record(
        session=session,
        actor=actor,
        action=action,
        hospital_id=hospital_id,
        resident_id=resident_ids[0] if len(resident_ids) == 1 else None,
        referral_id=referral_ids[0] if len(referral_ids) == 1 else None,
        detail={**(detail or {}), "referral_ids": referral_ids, "resident_ids": resident_ids},
    )
