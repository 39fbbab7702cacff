"""Access actions: the commission suspends or revokes a family doctor, an institution or an API client."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    ARRAY,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.kit.db import Base

SUBJECT_TYPES = ("doctor", "institution", "api_client")
MODES = ("suspended", "revoked")


class AccessSuspension(Base):
    """One suspension or revocation of a subject's access, in force until reinstated (or ``until``).

    ``suspended`` is temporary: it may carry an ``until`` at which it lapses by itself.
    ``revoked`` holds until the commission reinstates the subject. Both refuse the same requests.
    ``organisation_id`` is the subject's organisation (the institution itself, the doctor's
    institution, the client's organisation): the commission's region is checked against it.
    """

    __tablename__ = "access_suspensions"
    __table_args__ = (
        CheckConstraint("subject_type IN ('doctor', 'institution', 'api_client')", name="subject_type"),
        CheckConstraint("mode IN ('suspended', 'revoked')", name="mode"),
        CheckConstraint("mode = 'suspended' OR until IS NULL", name="revoked_has_no_until"),
        CheckConstraint("until IS NULL OR until > created_at", name="until_after_created"),
        CheckConstraint(
            "(reinstated_at IS NULL) = (reinstate_reason IS NULL)"
            " AND (reinstated_by_client_id IS NULL OR reinstated_at IS NOT NULL)",
            name="reinstated",
        ),
        # One action at a time per subject. It also serves the per-request check in authenticate().
        Index(
            "uq_access_suspensions_active_subject",
            "subject_type",
            "subject_id",
            unique=True,
            postgresql_where=text("reinstated_at IS NULL"),
        ),
        Index("ix_access_suspensions_organisation_id", "organisation_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    subject_type: Mapped[str] = mapped_column(String(12))
    # doctors.id, organisations.id or api_clients.id, as subject_type says.
    subject_id: Mapped[int] = mapped_column(BigInteger)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    mode: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str] = mapped_column(Text)
    until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by_client_id: Mapped[int] = mapped_column(ForeignKey("api_clients.id"))
    # References of the referrals cancelled with this action, when the commission chose to.
    cancelled_references: Mapped[list[str]] = mapped_column(
        ARRAY(String(20)), default=list, server_default="{}"
    )
    # Set when the commission reinstates, or (with no client) when a lapsed suspension is closed.
    reinstated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reinstated_by_client_id: Mapped[int | None] = mapped_column(ForeignKey("api_clients.id"))
    reinstate_reason: Mapped[str | None] = mapped_column(Text)
