"""The append-only decision record: who did what, when, why (R15)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, ForeignKey, Identity, Index, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from service.kit.db import Base


class AuditEntry(Base):
    """One decision or personal-data access. Triggers forbid UPDATE, DELETE and TRUNCATE."""

    __tablename__ = "audit_entries"
    __table_args__ = (
        Index("ix_audit_entries_resident_at", "resident_id", "at"),
        Index("ix_audit_entries_at", "at"),
        # The commission's queries by actor (R15), paged by id.
        Index("ix_audit_entries_actor_client_id", "actor_client_id", "id"),
        Index("ix_audit_entries_actor_org_id", "actor_org_id", "id"),
        # A list read records one entry naming every resident it showed, in detail.resident_ids.
        Index("ix_audit_entries_resident_ids", text("(detail -> 'resident_ids')"), postgresql_using="gin"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    request_id: Mapped[str | None] = mapped_column(String(64))
    actor_client_id: Mapped[int | None] = mapped_column(ForeignKey("api_clients.id"))
    actor_org_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"))
    actor: Mapped[str] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(40))
    code: Mapped[str | None] = mapped_column(String(60))
    hospital_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"))
    resident_id: Mapped[int | None] = mapped_column(ForeignKey("residents.id"))
    referral_id: Mapped[int | None] = mapped_column(ForeignKey("referrals.id"))
    reason: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
