"""Alerts: a signal above its threshold for one subject at one hospital, with its evidence (R14)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal, get_args

from sqlalchemy import (
    ARRAY,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.kit.db import Base
from service.kit.resources import sql_list

# The scalping signals (R14); docs/signals.md says what each measures, and the policy's
# signal thresholds (service/policy/signal_rules.py) when each alerts.
Signal = Literal[
    "book_cancel_churn",
    "cancel_near_release",
    "new_signing_referrals",
    "senior_only_referrals",
    "consultation_burst",
    "consultation_off_hours",
]
SIGNALS: tuple[str, ...] = get_args(Signal)
SubjectType = Literal["doctor", "institution"]
SUBJECT_TYPES: tuple[str, ...] = get_args(SubjectType)
ALERT_STATUSES = ("open", "acknowledged", "closed")


class Alert(Base):
    """One episode of a signal at or above its threshold; it closes when the signal falls below.

    The subject is a family doctor (``doctor_id`` set) or an institution (``doctor_id``
    null); ``institution_id`` is always the booking institution.
    """

    __tablename__ = "alerts"
    __table_args__ = (
        CheckConstraint(f"signal IN {sql_list(SIGNALS)}", name="signal"),
        CheckConstraint(f"subject_type IN {sql_list(SUBJECT_TYPES)}", name="subject_type"),
        CheckConstraint(f"status IN {sql_list(ALERT_STATUSES)}", name="status"),
        CheckConstraint("(subject_type = 'doctor') = (doctor_id IS NOT NULL)", name="subject"),
        CheckConstraint("(status = 'closed') = (closed_at IS NOT NULL)", name="closed_at"),
        CheckConstraint(
            "(acknowledged_at IS NULL) = (acknowledged_by_client_id IS NULL)", name="acknowledged"
        ),
        CheckConstraint("cardinality(evidence_referral_ids) >= 1", name="evidence"),
        # One live alert per signal, subject and hospital: a pass that finds it again updates it.
        Index(
            "uq_alerts_live",
            "signal",
            "hospital_id",
            "institution_id",
            text("COALESCE(doctor_id, 0)"),
            unique=True,
            postgresql_where=text("status <> 'closed'"),
        ),
        Index("ix_alerts_hospital", "hospital_id", "id"),
        Index("ix_alerts_institution", "institution_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    signal: Mapped[str] = mapped_column(String(40))
    subject_type: Mapped[str] = mapped_column(String(12))
    institution_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    doctor_id: Mapped[int | None] = mapped_column(ForeignKey("doctors.id"))
    hospital_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    # The policy whose thresholds applied at the latest pass; null: the deployment's defaults.
    policy_id: Mapped[int | None] = mapped_column(ForeignKey("policies.id"))
    window_hours: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    window_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    value: Mapped[Decimal] = mapped_column(Numeric(7, 4))
    threshold: Mapped[Decimal] = mapped_column(Numeric(7, 4))
    events: Mapped[int] = mapped_column(Integer)
    # Every referral that counted towards the signal while the alert was live.
    evidence_referral_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(12))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    acknowledged_by_client_id: Mapped[int | None] = mapped_column(ForeignKey("api_clients.id"))
    acknowledgement_note: Mapped[str | None] = mapped_column(Text)


IDENTITY_SIGNALS = ("identity_name_conflict",)


class IdentityConflict(Base):
    """Institutions declare different names for one ID number (docs/identity.md).

    One live row per resident: a later sync that finds the same disagreement updates it,
    and a sync after which every institution declares one name closes it.
    """

    __tablename__ = "identity_conflicts"
    __table_args__ = (
        CheckConstraint(f"signal IN {sql_list(IDENTITY_SIGNALS)}", name="signal"),
        CheckConstraint(f"status IN {sql_list(ALERT_STATUSES)}", name="status"),
        CheckConstraint("(status = 'closed') = (closed_at IS NOT NULL)", name="closed_at"),
        CheckConstraint(
            "(acknowledged_at IS NULL) = (acknowledged_by_client_id IS NULL)", name="acknowledged"
        ),
        Index(
            "uq_identity_conflicts_live",
            "resident_id",
            unique=True,
            postgresql_where=text("status <> 'closed'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    signal: Mapped[str] = mapped_column(String(40))
    resident_id: Mapped[int] = mapped_column(ForeignKey("residents.id"))
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(12))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    acknowledged_by_client_id: Mapped[int | None] = mapped_column(ForeignKey("api_clients.id"))
    acknowledgement_note: Mapped[str | None] = mapped_column(Text)


class IdentityConflictParty(Base):
    """One contract behind a conflict: who declared which (masked) name, and when it was seen."""

    __tablename__ = "identity_conflict_parties"

    conflict_id: Mapped[int] = mapped_column(ForeignKey("identity_conflicts.id"), primary_key=True)
    contract_id: Mapped[int] = mapped_column(ForeignKey("family_doctor_contracts.id"), primary_key=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    name_masked: Mapped[str] = mapped_column(String(100))
    # A keyed digest of the declared name: tells a changed declaration without keeping the name.
    name_index: Mapped[bytes] = mapped_column(LargeBinary(32))
    declared_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
