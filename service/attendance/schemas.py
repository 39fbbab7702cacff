"""Attendance reports, the hospital's worklist and receipts, and no-show bars."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import Field

from service.abuse.bounds import max_items
from service.kit.schemas import ApiModel
from service.referrals.schemas import NamedRef, ReferralOut

MAX_REPORTS = 500


class AttendanceReport(ApiModel):
    reference: str = Field(min_length=1, max_length=20)
    outcome: Literal["attended", "no_show"]
    note: str | None = Field(None, min_length=1, max_length=500)


class AttendanceBatch(ApiModel):
    reports: list[AttendanceReport] = Field(
        min_length=1,
        json_schema_extra=max_items(MAX_REPORTS),
        description=f"At most {MAX_REPORTS} per request (422 `too_many_items` beyond); send more in "
        "several requests: reports are independent and repeating one changes nothing.",
    )


class BarEffect(ApiModel):
    """What a report did to a no-show bar at this hospital."""

    bar_id: int
    effect: Literal["started", "lifted", "kept"]
    starts_on: date
    ends_on: date


class ReportResult(ApiModel):
    reference: str
    result: Literal["recorded", "corrected", "unchanged", "refused"]
    outcome: Literal["attended", "no_show"] | None = Field(
        None, description="The outcome now on record; null when refused."
    )
    code: str | None = Field(
        None, description="Why refused: referral_not_found, referral_cancelled or too_early."
    )
    detail: str | None = None
    bar: BarEffect | None = None


class AttendanceResult(ApiModel):
    recorded: int
    corrected: int
    unchanged: int
    refused: int
    results: list[ReportResult]


class Worklist(ApiModel):
    items: list[ReferralOut]
    next_cursor: str | None = None


class ReceiveIn(ApiModel):
    his_reference: str | None = Field(
        None, min_length=1, max_length=64, description="The referral's identifier in the HIS."
    )


class LiftIn(ApiModel):
    reason: str = Field(min_length=1, max_length=500)


class NoShowBarOut(ApiModel):
    id: int
    hospital: NamedRef
    resident_name_masked: str
    resident_id_masked: str
    starts_on: date
    ends_on: date = Field(description="The last day the bar holds (inclusive).")
    active: bool = Field(description="In force today (Beijing date): not lifted and not yet ended.")
    no_show_references: list[str]
    policy: str
    rule: str
    created_at: datetime
    lifted_at: datetime | None = None
    lift_kind: Literal["commission", "correction"] | None = None
    lift_reason: str | None = None


class NoShowBarList(ApiModel):
    items: list[NoShowBarOut]
    next_cursor: str | None = None
