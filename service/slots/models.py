"""Clinic sessions (出诊) pushed by a HIS, their numbered slots, and recorded shortfalls."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base

PERIODS = ("morning", "afternoon", "evening")
SLOT_STATUSES = ("public", "reserved", "booked", "returned", "withdrawn")
MAX_SLOT_MINUTES = 30  # R16


class ClinicSession(Base):
    """One doctor's clinic on one date and period, versioned by the HIS."""

    __tablename__ = "clinic_sessions"
    __table_args__ = (
        UniqueConstraint("hospital_id", "external_id"),
        CheckConstraint("period IN ('morning', 'afternoon', 'evening')", name="period"),
        CheckConstraint("status IN ('active', 'withdrawn')", name="status"),
        Index("ix_clinic_sessions_department_date", "department_id", "service_date"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    hospital_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    external_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(BigInteger)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"))
    doctor_id: Mapped[int] = mapped_column(ForeignKey("doctors.id"))
    doctor_title: Mapped[str] = mapped_column(String(20))
    service_date: Mapped[date] = mapped_column(Date)
    period: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(10))
    withdrawn_reason: Mapped[str | None] = mapped_column(Text)
    location: Mapped[str | None] = mapped_column(String(100))
    policy_id: Mapped[int | None] = mapped_column(ForeignKey("policies.id"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Slot(Base):
    """A numbered slot. ``pool_opens_at``/``public_at`` bound the pool window (R5, R6)."""

    __tablename__ = "slots"
    __table_args__ = (
        UniqueConstraint("session_id", "number"),
        CheckConstraint("status IN ('public', 'reserved', 'booked', 'returned', 'withdrawn')", name="status"),
        CheckConstraint("ends_at > starts_at", name="positive_length"),
        CheckConstraint(f"ends_at - starts_at <= interval '{MAX_SLOT_MINUTES} minutes'", name="r16_length"),
        CheckConstraint("pool_opens_at <= public_at - interval '1 day'", name="r5_lead"),
        CheckConstraint("number > 0", name="number"),
        # The release loop reads exactly the due reserved slots through this index.
        Index(
            "ix_slots_reserved_public_at",
            "public_at",
            postgresql_where=text("status = 'reserved'"),
        ),
        Index("ix_slots_hospital_starts_at", "hospital_id", "starts_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("clinic_sessions.id"))
    hospital_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    number: Mapped[int] = mapped_column(Integer)
    external_id: Mapped[str | None] = mapped_column(String(64))
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    pool_opens_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    public_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(10))
    returned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ReservationShortfall(Base):
    """A rule a hospital's department-day does not meet, as of its latest push."""

    __tablename__ = "reservation_shortfalls"
    __table_args__ = (
        CheckConstraint("kind IN ('ratio', 'senior_share', 'lead_time')", name="kind"),
        Index("ix_reservation_shortfalls_hospital_date", "hospital_id", "service_date"),
    )

    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), primary_key=True)
    service_date: Mapped[date] = mapped_column(Date, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    hospital_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    required: Mapped[int] = mapped_column(Integer)
    actual: Mapped[int] = mapped_column(Integer)
    policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id"))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
