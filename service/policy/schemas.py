"""Policy versions as the commission publishes and everyone reads them."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Literal

from pydantic import Field, model_validator

from service.kit.bounds import Day
from service.kit.resources import ResourceKind
from service.kit.schemas import ApiModel
from service.models.policy import (
    DEFAULT_WHAT_TO_BRING,
    MIN_LEAD_MINUTES,
    SLIP_ID_MAX_KEEP_FIRST,
    SLIP_ID_MAX_KEEP_LAST,
)
from service.policy.signal_rules import SignalThresholds


class NoShowRule(ApiModel):
    max_no_shows: int = Field(ge=1, le=1000)
    window_days: int = Field(ge=1, le=3650)
    bar_days: int = Field(ge=1, le=3650)
    text: str = Field(min_length=1, max_length=500)


class PolicyIn(ApiModel):
    code: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")
    name: str = Field(min_length=1, max_length=200)
    resource_kind: ResourceKind = Field(
        default="outpatient",
        description="The kind of slot this policy governs (R18). A code keeps its kind across versions; "
        "a hospital holds one policy per kind.",
    )
    effective_from: Day
    ratio: Decimal = Field(gt=0, le=1, max_digits=5, decimal_places=4)
    ratio_base: Literal["all_outpatient", "expert"] = Field(
        description="all_outpatient: every slot of the policy's kind is the base; "
        "expert: senior doctors' slots only (R2, outpatient policies only)."
    )
    min_senior_share: Decimal = Field(
        ge=0,
        le=1,
        max_digits=5,
        decimal_places=4,
        description="R4; must be 0 for examination and bed policies.",
    )
    lead_minutes: int = Field(
        ge=MIN_LEAD_MINUTES, le=90 * 24 * 60, description="R5: at least 1440 (one day)."
    )
    scope: Literal["city", "jurisdiction", "by_tier", "alliance", "lower_tier"]
    disease_prefixes: list[str] = Field(min_length=1, max_length=500)
    preferred_specialties: list[str] = Field(default_factory=list, max_length=100)
    consultation_max_age_hours: int = Field(gt=0, le=24 * 90)
    cancel_cutoff_minutes: int = Field(ge=0, le=7 * 24 * 60)
    cancel_hotline: str = Field(min_length=3, max_length=40)
    no_show_rule: NoShowRule
    signal_thresholds: SignalThresholds = Field(
        default_factory=SignalThresholds,
        description="R14: when each scalping signal raises an alert (docs/signals.md). "
        "A signal left out takes its default.",
    )
    source: str = ""
    # R14 booking limits: null (or omitted) means no limit; the presets set them (docs/limits.md).
    doctor_hourly_limit: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Bookings one family doctor may make in any 60 minutes, across hospitals; null: no limit.",
    )
    doctor_daily_limit: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Bookings one family doctor may make per Beijing-time day, across hospitals; "
        "null: no limit.",
    )
    institution_share_limit: Decimal | None = Field(
        default=None,
        gt=0,
        le=1,
        max_digits=5,
        decimal_places=4,
        description="Most of a hospital's pool of one kind on one service date that one institution's "
        "active referrals may hold: ceil(share × pool slots); null: no limit.",
    )
    resident_active_limit: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Active referrals one resident may hold across hospitals; null: no limit.",
    )
    waitlist_offer_hold_minutes: int = Field(
        default=10,
        ge=1,
        le=1440,
        description="How long a freed slot offered to the first entry of the waiting list is held for it "
        "(docs/waitlist.md).",
    )
    waitlist_urgent_priority: bool = Field(
        default=False,
        description="Whether a waiting-list entry the family doctor marks urgent (with a reason) goes before "
        "the entries that came earlier; false: first come, first served only.",
    )
    what_to_bring: str = Field(
        default=DEFAULT_WHAT_TO_BRING,
        min_length=1,
        max_length=200,
        description="What the patient brings to the visit (R11), printed on the slip (docs/slip.md).",
    )
    slip_id_keep_first: int = Field(
        default=SLIP_ID_MAX_KEEP_FIRST,
        ge=0,
        le=SLIP_ID_MAX_KEEP_FIRST,
        description="Characters of the resident's ID number the slip shows at its start, so that window "
        "staff can match it (R15: at most 6; the API always shows only the first and last).",
    )
    slip_id_keep_last: int = Field(
        default=SLIP_ID_MAX_KEEP_LAST,
        ge=0,
        le=SLIP_ID_MAX_KEEP_LAST,
        description="Characters of the ID number the slip shows at its end (at most 4).",
    )

    @model_validator(mode="after")
    def _title_rules_are_outpatient_only(self) -> PolicyIn:
        # R2 and R4 count doctors' titles; an examination block or a ward has none to count.
        if self.resource_kind != "outpatient" and (
            self.ratio_base != "all_outpatient" or self.min_senior_share
        ):
            raise ValueError("ratio_base 'expert' and a senior share apply to outpatient policies only")
        return self


class PolicyOut(PolicyIn):
    id: int
    version: int
    region_code: str | None = Field(
        description="The region whose commission owns this code; null: built-in or shared, "
        "so a commission that publishes it gets its own copy (docs/authorization.md)."
    )
    # What is stored is shown as it is, even from before dates were bounded on the way in.
    effective_from: date


class PolicyList(ApiModel):
    items: list[PolicyOut]
