"""Regions, organisations, alliances, departments, doctors and API clients."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    LargeBinary,
    SmallInteger,
    String,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from service.kit.db import Base

REGION_LEVELS = ("province", "city", "county")
ORG_KINDS = ("hospital", "primary", "authority")
HOSPITAL_TIERS = ("provincial", "city", "county")
PRIMARY_KINDS = ("community", "township", "village")
# A doctor's title, as the HIS and the signing platform send it.
Title = Literal["chief", "associate_chief", "attending", "resident"]
TITLES: tuple[str, ...] = get_args(Title)
SENIOR_TITLES = ("chief", "associate_chief")
ROLES = ("hospital", "primary", "platform", "hotline", "commission")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Region(Base):
    """A GB/T 2260 administrative division: province, city or county/district."""

    __tablename__ = "regions"
    __table_args__ = (
        CheckConstraint(_in("level", REGION_LEVELS), name="level"),
        CheckConstraint("code ~ '^[0-9]{6}$'", name="code_format"),
    )

    code: Mapped[str] = mapped_column(String(6), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    level: Mapped[str] = mapped_column(String(10))
    parent_code: Mapped[str | None] = mapped_column(ForeignKey("regions.code"))


class Organisation(Base):
    """A hospital, a primary-care institution, or an authority (platform, hotline, commission)."""

    __tablename__ = "organisations"
    __table_args__ = (
        CheckConstraint(_in("kind", ORG_KINDS), name="kind"),
        CheckConstraint(
            "(kind = 'hospital') = (hospital_level IS NOT NULL AND hospital_tier IS NOT NULL)",
            name="hospital_fields",
        ),
        CheckConstraint("hospital_level IS NULL OR hospital_level IN (2, 3)", name="hospital_level"),
        CheckConstraint(
            "hospital_tier IS NULL OR " + _in("hospital_tier", HOSPITAL_TIERS), name="hospital_tier"
        ),
        CheckConstraint("(kind = 'primary') = (primary_kind IS NOT NULL)", name="primary_fields"),
        CheckConstraint("primary_kind IS NULL OR " + _in("primary_kind", PRIMARY_KINDS), name="primary_kind"),
        CheckConstraint("reservation_mode IN ('pool', 'hospital')", name="reservation_mode"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(10))
    region_code: Mapped[str] = mapped_column(ForeignKey("regions.code"), index=True)
    hospital_level: Mapped[int | None] = mapped_column(SmallInteger)
    hospital_tier: Mapped[str | None] = mapped_column(String(10))
    primary_kind: Mapped[str | None] = mapped_column(String(10))
    # 'pool': the pool picks reserved slots; 'hospital': the HIS marks them and the pool checks.
    reservation_mode: Mapped[str] = mapped_column(String(10), default="pool", server_default="pool")
    # {"mon": [["07:30", "12:00"], ["13:30", "18:00"]], ...} in Beijing time; null: the default hours.
    opening_hours: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    # Where patients go and whom they call (docs/slip.md, docs/fhir.md): the slip and FHIR's Location.
    # Set by the commission for its region's organisations, or by a hospital for itself.
    address_line: Mapped[str | None] = mapped_column(String(200))
    postal_code: Mapped[str | None] = mapped_column(String(6))
    phone: Mapped[str | None] = mapped_column(String(40))


class RegionNoticeSettings(Base):
    """What a region's patient-facing channels need: its SMS gateway's signature and registered
    template codes, and the URL template of its booking deep links (docs/slip.md, docs/fhir.md).

    The most specific division with a row decides, the whole row; a region without one has none.
    """

    __tablename__ = "region_notice_settings"
    __table_args__ = (
        CheckConstraint(
            "booking_link_template IS NULL OR booking_link_template LIKE 'https://%'",
            name="booking_link_https",
        ),
    )

    region_code: Mapped[str] = mapped_column(ForeignKey("regions.code"), primary_key=True)
    sms_sign_name: Mapped[str | None] = mapped_column(String(20))
    sms_template_booked: Mapped[str | None] = mapped_column(String(40))
    sms_template_cancelled: Mapped[str | None] = mapped_column(String(40))
    booking_link_template: Mapped[str | None] = mapped_column(String(500))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_by_client_id: Mapped[int | None] = mapped_column(ForeignKey("api_clients.id"))


class Alliance(Base):
    """A medical alliance (医联体/医共体): a lead hospital and its member institutions."""

    __tablename__ = "alliances"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    lead_hospital_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)


class AllianceMember(Base):
    __tablename__ = "alliance_members"

    alliance_id: Mapped[int] = mapped_column(ForeignKey("alliances.id"), primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), primary_key=True, index=True)


class Department(Base):
    """A hospital department, keyed by the HIS's own code."""

    __tablename__ = "departments"
    __table_args__ = (UniqueConstraint("hospital_id", "code"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    hospital_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    code: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    # A coarse specialty key (cardiology, endocrinology, ...) that policies match on.
    specialty: Mapped[str | None] = mapped_column(String(40))


class Doctor(Base):
    """A hospital doctor, or a family doctor of a primary institution."""

    __tablename__ = "doctors"
    __table_args__ = (
        UniqueConstraint("organisation_id", "code"),
        CheckConstraint(_in("title", TITLES), name="title"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    code: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100))
    title: Mapped[str] = mapped_column(String(20))


class ApiClient(Base):
    """A caller: one organisation, one role, one key stored as an HMAC digest."""

    __tablename__ = "api_clients"
    __table_args__ = (CheckConstraint(_in("role", ROLES), name="role"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    role: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(200))
    key_prefix: Mapped[str] = mapped_column(String(16))
    key_digest: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
