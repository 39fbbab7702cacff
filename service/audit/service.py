"""Recording decisions in the append-only audit table."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.models import AuditEntry
from service.context import Actor


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
