"""Referrals booked through the pool, and stored answers for Idempotency-Key replays."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from service.kit.db import Base

# AES-GCM associated data of the name a referral was booked under (service/kit/crypto.py).
REFERRAL_RESIDENT_NAME = "referrals.resident_name"


class Referral(Base):
    """A booking of one reserved slot for one resident, from one consultation."""

    __tablename__ = "referrals"
    __table_args__ = (
        CheckConstraint("status IN ('booked', 'cancelled')", name="status"),
        CheckConstraint("(status = 'cancelled') = (cancelled_at IS NOT NULL)", name="cancelled_at"),
        CheckConstraint("cardinality(diagnoses) >= 1", name="r10_diagnosis"),
        CheckConstraint("attendance IN ('attended', 'no_show')", name="attendance"),
        CheckConstraint(
            "(attendance IS NULL) = (attendance_reported_at IS NULL)", name="attendance_reported_at"
        ),
        CheckConstraint("his_reference IS NULL OR received_at IS NOT NULL", name="his_reference_received"),
        # The two invariants the pool must never break, held by the database itself.
        Index(
            "uq_referrals_active_slot",
            "slot_id",
            unique=True,
            postgresql_where=text("status = 'booked'"),
        ),
        Index(
            "uq_referrals_active_resident_department_day",
            "resident_id",
            "department_id",
            "service_date",
            unique=True,
            postgresql_where=text("status = 'booked'"),
        ),
        Index("ix_referrals_booker_booked_at", "booker_org_id", "booked_at"),
        # Counting a family doctor's recent bookings (R14 limits).
        Index("ix_referrals_doctor_booked_at", "referring_doctor_id", "booked_at"),
        Index("ix_referrals_hospital_date", "hospital_id", "service_date"),
        # The hospital's worklist: booked referrals that no attendance report has resolved.
        Index(
            "ix_referrals_unreported",
            "hospital_id",
            "service_date",
            postgresql_where=text("status = 'booked' AND attendance IS NULL"),
        ),
        # Counting a resident's no-shows at a hospital (R13).
        Index(
            "ix_referrals_no_shows",
            "resident_id",
            "hospital_id",
            "service_date",
            postgresql_where=text("attendance = 'no_show'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    reference: Mapped[str] = mapped_column(String(20), unique=True)
    hospital_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"))
    session_id: Mapped[int] = mapped_column(ForeignKey("clinic_sessions.id"))
    slot_id: Mapped[int] = mapped_column(ForeignKey("slots.id"), index=True)
    service_date: Mapped[date] = mapped_column(Date)
    resident_id: Mapped[int] = mapped_column(ForeignKey("residents.id"), index=True)
    # The name the referral was booked under (AES-GCM ciphertext): what its notice, slip and events show.
    resident_name_enc: Mapped[bytes] = mapped_column(LargeBinary)
    booker_org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    referring_doctor_id: Mapped[int] = mapped_column(ForeignKey("doctors.id"))
    booked_by_client_id: Mapped[int] = mapped_column(ForeignKey("api_clients.id"))
    policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id"))
    encounter_id: Mapped[str] = mapped_column(String(64))
    encountered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    diagnoses: Mapped[list[str]] = mapped_column(ARRAY(Text))
    verification_code_enc: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(12))
    booked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_by: Mapped[str | None] = mapped_column(String(20))
    cancelled_by_client_id: Mapped[int | None] = mapped_column(ForeignKey("api_clients.id"))
    cancel_reason: Mapped[str | None] = mapped_column(Text)
    # R13: what the HIS reported; null until it reports, never filled in by the service itself.
    attendance: Mapped[str | None] = mapped_column(String(10))
    attendance_reported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attendance_note: Mapped[str | None] = mapped_column(Text)
    # The HIS acknowledged the referral into its own system (R19).
    received_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    his_reference: Mapped[str | None] = mapped_column(String(64))


class IdempotencyKey(Base):
    """The first successful answer to a request carrying an Idempotency-Key."""

    __tablename__ = "idempotency_keys"
    # The purge deletes rows past their window (service/referrals/idempotency.py).
    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)

    client_id: Mapped[int] = mapped_column(ForeignKey("api_clients.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    response_status: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
