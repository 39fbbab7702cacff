"""Signed residents and their family-doctor contracts. Personal fields are ciphertext."""

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
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.kit.db import Base

# AES-GCM associated data: the column each ciphertext belongs to (service/kit/crypto.py).
CONTRACT_NAME = "family_doctor_contracts.name"
CONTRACT_PHONE = "family_doctor_contracts.phone"


class Resident(Base):
    """A person, found by the blind index of their ID number; name and ID are AES-GCM ciphertext.

    The name and phone are those the person was first registered under and are never
    rewritten: each contract (and each referral) keeps the identity its institution declared.
    """

    __tablename__ = "residents"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    id_index: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    id_number_enc: Mapped[bytes] = mapped_column(LargeBinary)
    name_enc: Mapped[bytes] = mapped_column(LargeBinary)
    phone_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FamilyDoctorContract(Base):
    """A signed family-doctor contract (家医签约), synced from the signing platform."""

    __tablename__ = "family_doctor_contracts"
    __table_args__ = (
        UniqueConstraint("institution_id", "contract_no"),
        CheckConstraint("ends_on >= starts_on", name="dates"),
        Index("ix_family_doctor_contracts_resident_doctor", "resident_id", "family_doctor_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    contract_no: Mapped[str] = mapped_column(String(64))
    resident_id: Mapped[int] = mapped_column(ForeignKey("residents.id"))
    family_doctor_id: Mapped[int] = mapped_column(ForeignKey("doctors.id"))
    starts_on: Mapped[date] = mapped_column(Date)
    ends_on: Mapped[date] = mapped_column(Date)
    # The name and phone this contract's institution declared (docs/identity.md), AES-GCM ciphertext.
    name_enc: Mapped[bytes] = mapped_column(LargeBinary)
    phone_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


CONTRACT_SOURCES = ("any", "platform")


class RegionContractSource(Base):
    """Who may sync contracts for the primary institutions of a region: anyone in scope, or the platform.

    The most specific division with a row decides; a region without one takes ``any``.
    """

    __tablename__ = "region_contract_sources"
    __table_args__ = (CheckConstraint("source IN ('any', 'platform')", name="source"),)

    region_code: Mapped[str] = mapped_column(ForeignKey("regions.code"), primary_key=True)
    source: Mapped[str] = mapped_column(String(12))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_by_client_id: Mapped[int | None] = mapped_column(ForeignKey("api_clients.id"))
