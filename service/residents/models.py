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

from service.db import Base


class Resident(Base):
    """A person, found by the blind index of their ID number; name and ID are AES-GCM ciphertext."""

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
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
