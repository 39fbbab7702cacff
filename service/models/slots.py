"""Clinic sessions (出诊) pushed by a HIS, their numbered slots, and recorded shortfalls."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.kit.db import Base
from service.kit.resources import (
    MAX_BED_WINDOW_MINUTES,
    MAX_SLOT_MINUTES,
    MODALITIES,
    RESOURCE_KINDS,
    sql_list,
)

PERIODS = ("morning", "afternoon", "evening")
SLOT_STATUSES = ("public", "reserved", "offered", "booked", "returned", "withdrawn")


class ClinicSession(Base):
    """One date and period of one resource, versioned by the HIS (R18).

    Outpatient: one doctor's clinic. Examination: a modality's block of the day
    (the doctor is optional). Bed: one ward on one bed day (no doctor needed).
    """

    __tablename__ = "clinic_sessions"
    __table_args__ = (
        # A removed session frees its HIS session ID for the corrected push (docs/input-bounds.md).
        Index(
            "uq_clinic_sessions_hospital_id_external_id",
            "hospital_id",
            "external_id",
            unique=True,
            postgresql_where=text("status <> 'removed'"),
        ),
        # The target of the slots' (session_id, resource_kind) foreign key: a slot has its session's kind.
        UniqueConstraint("id", "resource_kind"),
        CheckConstraint("period IN ('morning', 'afternoon', 'evening')", name="period"),
        CheckConstraint("status IN ('active', 'withdrawn', 'removed')", name="status"),
        CheckConstraint(f"resource_kind IN {sql_list(RESOURCE_KINDS)}", name="resource_kind"),
        CheckConstraint(f"modality IS NULL OR modality IN {sql_list(MODALITIES)}", name="modality"),
        CheckConstraint("(doctor_id IS NULL) = (doctor_title IS NULL)", name="doctor_title"),
        CheckConstraint("(ward_code IS NULL) = (ward_name IS NULL)", name="ward"),
        CheckConstraint(
            "CASE resource_kind"
            " WHEN 'outpatient' THEN doctor_id IS NOT NULL AND modality IS NULL AND ward_code IS NULL"
            " WHEN 'examination' THEN modality IS NOT NULL AND ward_code IS NULL"
            " ELSE ward_code IS NOT NULL AND modality IS NULL END",
            name="resource_detail",
        ),
        Index("ix_clinic_sessions_department_date", "department_id", "service_date"),
        # A date's sessions for the report summary's closing job, a few dates' for a report's open days.
        Index("ix_clinic_sessions_service_date_hospital", "service_date", "hospital_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    hospital_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    external_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(BigInteger)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"))
    resource_kind: Mapped[str] = mapped_column(String(12), server_default="outpatient")
    modality: Mapped[str | None] = mapped_column(String(20))
    ward_code: Mapped[str | None] = mapped_column(String(64))
    ward_name: Mapped[str | None] = mapped_column(String(200))
    doctor_id: Mapped[int | None] = mapped_column(ForeignKey("doctors.id"))
    doctor_title: Mapped[str | None] = mapped_column(String(20))
    service_date: Mapped[date] = mapped_column(Date)
    period: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(10))
    withdrawn_reason: Mapped[str | None] = mapped_column(Text)
    location: Mapped[str | None] = mapped_column(String(100))
    policy_id: Mapped[int | None] = mapped_column(ForeignKey("policies.id"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Slot(Base):
    """A numbered slot (a bed, for a bed session). ``pool_opens_at``/``public_at`` bound the pool window (R5, R6)."""

    __tablename__ = "slots"
    __table_args__ = (
        UniqueConstraint("session_id", "number"),
        ForeignKeyConstraint(
            ["session_id", "resource_kind"], ["clinic_sessions.id", "clinic_sessions.resource_kind"]
        ),
        # ``offered``: held for a waiting-list entry (docs/waitlist.md); claimed from ``reserved`` like a booking.
        CheckConstraint(
            "status IN ('public', 'reserved', 'offered', 'booked', 'returned', 'withdrawn')", name="status"
        ),
        CheckConstraint("ends_at > starts_at", name="positive_length"),
        CheckConstraint(
            f"resource_kind = 'bed' OR ends_at - starts_at <= interval '{MAX_SLOT_MINUTES} minutes'",
            name="r16_length",
        ),
        CheckConstraint(
            f"ends_at - starts_at <= interval '{MAX_BED_WINDOW_MINUTES} minutes'", name="bed_window"
        ),
        CheckConstraint("pool_opens_at <= public_at - interval '1 day'", name="r5_lead"),
        CheckConstraint("number > 0", name="number"),
        # The release loop reads exactly the due reserved (and offered) slots through this index,
        # in its order, each batch resuming where the last one ended (slots/release.py).
        Index(
            "ix_slots_reserved_public_at_session_id",
            "public_at",
            "session_id",
            postgresql_where=text("status IN ('reserved', 'offered')"),
        ),
        Index("ix_slots_hospital_starts_at", "hospital_id", "starts_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    session_id: Mapped[int] = mapped_column(BigInteger)
    resource_kind: Mapped[str] = mapped_column(String(12), server_default="outpatient")
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
    """A rule a hospital's department-day-kind does not meet, as of its latest push.

    ``kind`` is the rule; ``resource_kind`` the kind of slots it was measured over.
    """

    __tablename__ = "reservation_shortfalls"
    __table_args__ = (
        CheckConstraint("kind IN ('ratio', 'senior_share', 'lead_time')", name="kind"),
        CheckConstraint(f"resource_kind IN {sql_list(RESOURCE_KINDS)}", name="resource_kind"),
        Index("ix_reservation_shortfalls_hospital_date", "hospital_id", "service_date"),
    )

    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), primary_key=True)
    service_date: Mapped[date] = mapped_column(Date, primary_key=True)
    resource_kind: Mapped[str] = mapped_column(String(12), primary_key=True, server_default="outpatient")
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    hospital_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    required: Mapped[int] = mapped_column(Integer)
    actual: Mapped[int] = mapped_column(Integer)
    policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id"))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
