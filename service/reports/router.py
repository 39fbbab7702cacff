"""GET /v1/reports/compliance: the commission's compliance report, as JSON or CSV (R20)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from service.kit.bounds import Day
from service.kit.ids import QueryId
from service.kit.resources import ResourceKind
from service.reports import service
from service.reports.csvfile import report_csv
from service.reports.schemas import ComplianceReport, Granularity, Group, RegionLevel
from service.web.contract import operation
from service.web.unit import Unit, UnitRoute, reads

router = APIRouter(prefix="/v1", tags=["reports"], route_class=UnitRoute)
Commission = Annotated[Unit, reads("commission")]


def wants_csv(request: Request, fmt: str | None) -> bool:
    """``format`` decides when given; otherwise an Accept header naming text/csv does."""
    if fmt is not None:
        return fmt == "csv"
    return "text/csv" in request.headers.get("accept", "")


@router.get(
    "/reports/compliance",
    response_model=ComplianceReport,
    **operation(
        "getComplianceReport",
        "Compliance report per group and period",
        responses={
            200: {"content": {"text/csv": {}}, "description": "The report (JSON, or CSV with format=csv)."}
        },
        problems=[
            "report_range_reversed",
            "report_range_too_long",
            "region_outside",
            "hospital_not_found",
            "hospital_outside_region",
            "alliance_not_found",
            "alliance_outside_region",
        ],
    ),
)
async def compliance_report(
    request: Request,
    unit: Commission,
    date_from: Annotated[Day, Query(alias="from", description="First service date (Beijing).")],
    date_to: Annotated[Day, Query(alias="to", description="Last service date, inclusive.")],
    granularity: Granularity = "day",
    group: Group = "hospital",
    region_level: Annotated[
        RegionLevel, Query(description="With group=region: roll up per province, city or county.")
    ] = "city",
    hospital_id: QueryId = None,
    region: Annotated[str | None, Query(pattern=r"^[0-9]{6}$")] = None,
    alliance_id: QueryId = None,
    resource_kind: ResourceKind = "outpatient",
    fmt: Annotated[Literal["json", "csv"] | None, Query(alias="format")] = None,
) -> Response:
    """Reserved ratio, senior share, use and up-referral share per group and period, with shortfalls.

    Only hospitals of the commission's region count; a filter naming another region is refused.
    """
    service.check_range(date_from, date_to, granularity)
    hospital_ids = await service.hospitals_in_scope(
        session=unit.session,
        commission_region=unit.caller.region_code,
        hospital_id=hospital_id,
        region=region,
        alliance_id=alliance_id,
    )
    report = await service.compliance_report(
        session=unit.session,
        hospital_ids=hospital_ids,
        date_from=date_from,
        date_to=date_to,
        granularity=granularity,
        group=group,
        region_level=region_level,
        resource_kind=resource_kind,
        alliance_id=alliance_id,
        now=unit.now,
    )
    if not wants_csv(request, fmt):
        # Already JSON, formatted as the rows were read; ComplianceReport (above) is its schema.
        return Response(content=report.body, media_type="application/json")
    filename = f"compliance-{group}-{granularity}-{date_from.isoformat()}-{date_to.isoformat()}.csv"
    return Response(
        content=report_csv(report.group, report.rows()).encode("utf-8"),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
