"""Policies are versioned data assigned to hospitals (R1–R5, R7, R10, R12, R13)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from service.kit.db import Base
from service.kit.resources import RESOURCE_KINDS, sql_list

RATIO_BASES = ("all_outpatient", "expert")
SCOPES = ("city", "jurisdiction", "by_tier", "alliance", "lower_tier")
MIN_LEAD_MINUTES = 24 * 60  # R5: at least one day before the public release
# The slip shows the resident's ID number with this many characters kept at each end (R15). Chinese
# hospitals print the first 6 (the issuing division) and the last 4; the birth date between them
# always stays masked, so no setting prints the whole number (docs/slip.md).
SLIP_ID_MAX_KEEP_FIRST = 6
SLIP_ID_MAX_KEEP_LAST = 4
DEFAULT_WHAT_TO_BRING = "本人身份证（或社会保障卡）、医保卡、本转诊单，以及近期的检查检验报告"


class Policy(Base):
    """One version of a named policy; the version in force on a date is the latest effective one."""

    __tablename__ = "policies"
    __table_args__ = (
        UniqueConstraint("code", "version"),
        CheckConstraint("ratio > 0 AND ratio <= 1", name="ratio"),
        CheckConstraint("ratio_base IN ('all_outpatient', 'expert')", name="ratio_base"),
        CheckConstraint("min_senior_share >= 0 AND min_senior_share <= 1", name="senior_share"),
        CheckConstraint(f"lead_minutes >= {MIN_LEAD_MINUTES}", name="lead_time"),
        CheckConstraint(
            "scope IN ('city', 'jurisdiction', 'by_tier', 'alliance', 'lower_tier')", name="scope"
        ),
        CheckConstraint("consultation_max_age_hours > 0", name="consultation_window"),
        CheckConstraint("cancel_cutoff_minutes >= 0", name="cancel_cutoff"),
        CheckConstraint(f"resource_kind IN {sql_list(RESOURCE_KINDS)}", name="resource_kind"),
        # R2 and R4 are about doctors' titles: only outpatient policies measure them.
        CheckConstraint(
            "resource_kind = 'outpatient' OR (ratio_base = 'all_outpatient' AND min_senior_share = 0)",
            name="kind_rules",
        ),
        # R14 booking limits; NULL means no limit (docs/limits.md).
        CheckConstraint("doctor_hourly_limit > 0", name="doctor_hourly_limit"),
        CheckConstraint("doctor_daily_limit > 0", name="doctor_daily_limit"),
        CheckConstraint(
            "institution_share_limit > 0 AND institution_share_limit <= 1", name="institution_share_limit"
        ),
        CheckConstraint("resident_active_limit > 0", name="resident_active_limit"),
        CheckConstraint("waitlist_offer_hold_minutes BETWEEN 1 AND 1440", name="waitlist_offer_hold"),
        CheckConstraint(
            f"slip_id_keep_first BETWEEN 0 AND {SLIP_ID_MAX_KEEP_FIRST}"
            f" AND slip_id_keep_last BETWEEN 0 AND {SLIP_ID_MAX_KEEP_LAST}",
            name="slip_id_mask",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    code: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    # R18: which kind of slot this policy governs; one code keeps one kind across its versions.
    resource_kind: Mapped[str] = mapped_column(String(12), server_default="outpatient")
    effective_from: Mapped[date] = mapped_column(Date)
    ratio: Mapped[Decimal] = mapped_column(Numeric(5, 4))
    ratio_base: Mapped[str] = mapped_column(String(20))
    min_senior_share: Mapped[Decimal] = mapped_column(Numeric(5, 4))
    lead_minutes: Mapped[int] = mapped_column(Integer)
    scope: Mapped[str] = mapped_column(String(20))
    disease_prefixes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    # Empty means every department reserves; otherwise only departments with these specialties.
    preferred_specialties: Mapped[list[str]] = mapped_column(ARRAY(Text))
    consultation_max_age_hours: Mapped[int] = mapped_column(Integer)
    cancel_cutoff_minutes: Mapped[int] = mapped_column(Integer)
    cancel_hotline: Mapped[str] = mapped_column(String(40))
    # {"max_no_shows": 3, "window_days": 180, "bar_days": 90, "text": "..."}
    no_show_rule: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # R14: per-signal scalping thresholds (service/policy/signal_rules.py); a signal left out takes its default.
    signal_thresholds: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    source: Mapped[str] = mapped_column(Text, default="", server_default="")
    # R14 booking limits (service/referrals/guards.py); NULL means no limit.
    doctor_hourly_limit: Mapped[int | None] = mapped_column(Integer)
    doctor_daily_limit: Mapped[int | None] = mapped_column(Integer)
    institution_share_limit: Mapped[Decimal | None] = mapped_column(Numeric(5, 4))
    resident_active_limit: Mapped[int | None] = mapped_column(Integer)
    # What the patient brings (R11), printed on the slip; and how much of the ID number it shows.
    what_to_bring: Mapped[str] = mapped_column(Text, server_default=DEFAULT_WHAT_TO_BRING)
    slip_id_keep_first: Mapped[int] = mapped_column(SmallInteger, server_default="6")
    slip_id_keep_last: Mapped[int] = mapped_column(SmallInteger, server_default="4")
    # The waiting list (docs/waitlist.md): how long an offered slot is held for the entry, and
    # whether an entry the family doctor marks urgent goes before the others.
    waitlist_offer_hold_minutes: Mapped[int] = mapped_column(Integer, server_default="10")
    waitlist_urgent_priority: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The region whose commission owns the code: it alone publishes new versions, and the code
    # governs only hospitals inside it. Null: a built-in or shared code, which no commission
    # changes in place; publishing it makes the region's own copy (docs/authorization.md).
    region_code: Mapped[str | None] = mapped_column(ForeignKey("regions.code"))


class HospitalPolicy(Base):
    """Which policy (by code) governs a hospital's pool of one resource kind."""

    __tablename__ = "hospital_policies"
    __table_args__ = (CheckConstraint(f"resource_kind IN {sql_list(RESOURCE_KINDS)}", name="resource_kind"),)

    hospital_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), primary_key=True)
    resource_kind: Mapped[str] = mapped_column(String(12), primary_key=True, server_default="outpatient")
    policy_code: Mapped[str] = mapped_column(String(64))
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
