"""The compliance report as JSON: one row per group and period."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel

from service.kit.resources import ResourceKind

Granularity = Literal["day", "week", "month"]
Group = Literal["hospital", "department", "region", "alliance"]
RegionLevel = Literal["province", "city", "county"]


class ReportOrgRef(BaseModel):
    id: int
    name: str


class ReportDepartmentRef(BaseModel):
    id: int
    code: str
    name: str


class ReportRegionRef(BaseModel):
    code: str
    name: str | None


class ReportPolicyRef(BaseModel):
    id: int
    code: str
    version: int


class ReportShortfalls(BaseModel):
    """How many department-days of the row miss each rule, as recorded at their latest push."""

    ratio: int
    senior_share: int
    lead_time: int


class ReportRow(BaseModel):
    hospital: ReportOrgRef | None
    department: ReportDepartmentRef | None
    region: ReportRegionRef | None
    alliance: ReportOrgRef | None
    period: str  # 2026-03-02, 2026-W10 or 2026-03
    period_start: date  # the first day of the period inside the report's range
    period_end: date  # the last day of the period inside the report's range
    offered: int
    reserved: int
    reserved_ratio: float | None
    senior_reserved: int
    senior_share: float | None
    pool_bookings: int
    returned: int
    cancelled: int
    attended: int
    no_show: int
    utilisation: float | None
    up_referral_share: float | None
    shortfall: bool
    shortfalls: ReportShortfalls
    policies: list[ReportPolicyRef]


class ReportWaitingList(BaseModel):
    """Unmet demand at one hospital department (docs/waitlist.md): a current figure, as of
    ``generated_at``, not per period."""

    hospital: ReportOrgRef
    department: ReportDepartmentRef
    waiting: int  # residents waiting now for a day in the report's range
    urgent: int  # of them, marked urgent by their family doctor
    expired_unmet: int  # entries whose date range ended in the report's range without a slot


class ComplianceReport(BaseModel):
    date_from: date
    date_to: date
    granularity: Granularity
    group: Group
    region_level: RegionLevel | None
    resource_kind: ResourceKind
    generated_at: datetime
    rows: list[ReportRow]
    waiting_lists: list[ReportWaitingList]
