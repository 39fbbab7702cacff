"""The waiting list (候补): entries a family doctor puts a resident on, and the offers of freed slots."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.kit.db import Base
from service.kit.resources import RESOURCE_KINDS, sql_list

ENTRY_STATUSES = ("waiting", "booked", "withdrawn", "expired")
OFFER_STATUSES = ("pending", "accepted", "declined", "expired", "lapsed", "withdrawn")
# AES-GCM associated data of the name the entry was made under (service/kit/crypto.py).
ENTRY_RESIDENT_NAME = "waitlist_entries.resident_name"


class WaitlistEntry(Base):
    """One resident waiting for a hospital's department (a modality, a ward) over a date range."""

    __tablename__ = "waitlist_entries"
    __table_args__ = (
        CheckConstraint(f"status IN {sql_list(ENTRY_STATUSES)}", name="status"),
        CheckConstraint("(status = 'waiting') = (closed_at IS NULL)", name="closed_at"),
        CheckConstraint("(status = 'booked') = (referral_id IS NOT NULL)", name="referral"),
        CheckConstraint("to_date >= from_date", name="date_range"),
        CheckConstraint(f"resource_kind IN {sql_list(RESOURCE_KINDS)}", name="resource_kind"),
        CheckConstraint("cardinality(diagnoses) >= 1", name="r10_diagnosis"),
        CheckConstraint("urgent = (urgent_reason IS NOT NULL)", name="urgent_reason"),
        # One waiting entry per resident, hospital and department (docs/waitlist.md).
        Index(
            "uq_waitlist_entries_waiting_resident_department",
            "resident_id",
            "hospital_id",
            "department_id",
            unique=True,
            postgresql_where=text("status = 'waiting'"),
        ),
        # The line of one department: urgent first (where the policy allows it), then by time.
        Index(
            "ix_waitlist_entries_line",
            "hospital_id",
            "department_id",
            "created_at",
            postgresql_where=text("status = 'waiting'"),
        ),
        # A family doctor's entries in the last hour or day count against the R14 limits.
        Index("ix_waitlist_entries_doctor_created_at", "referring_doctor_id", "created_at"),
        Index("ix_waitlist_entries_booker_created_at", "booker_org_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    reference: Mapped[str] = mapped_column(String(20), unique=True)
    hospital_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"))
    resource_kind: Mapped[str] = mapped_column(String(12))
    modality: Mapped[str | None] = mapped_column(String(20))
    ward_code: Mapped[str | None] = mapped_column(String(64))
    from_date: Mapped[date] = mapped_column(Date)
    to_date: Mapped[date] = mapped_column(Date)
    resident_id: Mapped[int] = mapped_column(ForeignKey("residents.id"))
    resident_name_enc: Mapped[bytes] = mapped_column(LargeBinary)
    booker_org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    referring_doctor_id: Mapped[int] = mapped_column(ForeignKey("doctors.id"))
    created_by_client_id: Mapped[int] = mapped_column(ForeignKey("api_clients.id"))
    policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id"))
    encounter_id: Mapped[str] = mapped_column(String(64))
    encountered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    diagnoses: Mapped[list[str]] = mapped_column(ARRAY(Text))
    urgent: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    urgent_reason: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    referral_id: Mapped[int | None] = mapped_column(ForeignKey("referrals.id"))


class WaitlistOffer(Base):
    """A freed slot held for one entry until ``expires_at``: the slot's status is ``offered`` meanwhile."""

    __tablename__ = "waitlist_offers"
    __table_args__ = (
        CheckConstraint(f"status IN {sql_list(OFFER_STATUSES)}", name="status"),
        CheckConstraint("(status = 'pending') = (closed_at IS NULL)", name="closed_at"),
        CheckConstraint("(status = 'accepted') = (referral_id IS NOT NULL)", name="referral"),
        CheckConstraint("expires_at > offered_at", name="hold"),
        # An entry is offered one slot once: a declined or expired offer passes to the next in line.
        UniqueConstraint("entry_id", "slot_id"),
        # At most one live offer per slot and per entry, held by the database (docs/waitlist.md).
        Index(
            "uq_waitlist_offers_pending_slot",
            "slot_id",
            unique=True,
            postgresql_where=text("status = 'pending'"),
        ),
        Index(
            "uq_waitlist_offers_pending_entry",
            "entry_id",
            unique=True,
            postgresql_where=text("status = 'pending'"),
        ),
        # The offer loop reads the expired pending offers through this index.
        Index(
            "ix_waitlist_offers_pending_expires_at",
            "expires_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    reference: Mapped[str] = mapped_column(String(20), unique=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("waitlist_entries.id"))
    slot_id: Mapped[int] = mapped_column(ForeignKey("slots.id"))
    hospital_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    booker_org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    status: Mapped[str] = mapped_column(String(12))
    offered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    referral_id: Mapped[int | None] = mapped_column(ForeignKey("referrals.id"))
