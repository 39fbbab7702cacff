"""A HIS reports attendance, works its worklist and receives referrals; the commission lifts bars."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from service.abuse.bounds import refuse_if_too_many
from service.attendance import service
from service.attendance.schemas import (
    MAX_REPORTS,
    AttendanceBatch,
    AttendanceResult,
    LiftIn,
    NoShowBarList,
    NoShowBarOut,
    ReceiveIn,
    Worklist,
)
from service.kit.bounds import instant_in_window
from service.kit.cursors import CursorQuery, cursor_id, decode_cursor, decode_id_cursor, encode_cursor
from service.kit.ids import PathId, QueryId
from service.referrals.schemas import ReferralOut
from service.web.contract import operation
from service.web.unit import Unit, UnitRoute, writes

router = APIRouter(prefix="/v1", tags=["attendance"], route_class=UnitRoute)
# Every endpoint here writes: reports and receipts change referrals, lifts change bars, and the
# worklist and the bar list record the read of personal data (R15).
Hospital = Annotated[Unit, writes("hospital")]
Commission = Annotated[Unit, writes("commission")]


@router.post(
    "/hospital/attendance",
    response_model=AttendanceResult,
    **operation("reportAttendance", "Report attendance or no-shows in bulk", problems=["too_many_items"]),
)
async def report_attendance(body: AttendanceBatch, unit: Hospital) -> AttendanceResult:
    """Report attended or no-show per referral (R13); repeating a report changes nothing.

    A schema error refuses the whole batch; otherwise each item is applied or refused on its own.
    """
    refuse_if_too_many("reports", len(body.reports), MAX_REPORTS)
    return await service.report_attendance(
        session=unit.session,
        actor=unit.actor,
        crypto=unit.crypto,
        hospital_id=unit.caller.org_id,
        reports=body.reports,
    )


def _instant_and_id(parts: list[Any]) -> tuple[datetime, int]:
    when = datetime.fromisoformat(parts[0])
    if when.tzinfo is None or not instant_in_window(when):
        raise ValueError("naive or out-of-window instant")
    return when, cursor_id(parts[1])


@router.get(
    "/hospital/worklist",
    response_model=Worklist,
    **operation("listWorklist", "List past referrals still without attendance", problems=["invalid_cursor"]),
)
async def worklist(
    unit: Hospital,
    cursor: CursorQuery = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Worklist:
    """Booked referrals whose slot has ended with no attendance report, oldest first.

    They stay here until the HIS reports: the service never marks a referral as a no-show.
    """
    after = decode_cursor(cursor, _instant_and_id) if cursor is not None else None
    items, following = await service.list_worklist(
        session=unit.session,
        actor=unit.actor,
        crypto=unit.crypto,
        hospital_id=unit.caller.org_id,
        after=after,
        limit=limit,
    )
    next_cursor = encode_cursor(following[0].isoformat(), following[1]) if following else None
    return Worklist(items=items, next_cursor=next_cursor)


@router.post(
    "/referrals/{reference}/receive",
    response_model=ReferralOut,
    **operation(
        "receiveReferral",
        "Acknowledge a referral into the HIS",
        problems=["referral_not_found", "referral_cancelled", "his_reference_conflict"],
    ),
)
async def receive_referral(
    reference: str,
    unit: Hospital,
    body: ReceiveIn | None = None,
) -> ReferralOut:
    """The HIS acknowledges the referral into its own system; the referring doctor sees it."""
    return await service.receive_referral(
        session=unit.session,
        actor=unit.actor,
        crypto=unit.crypto,
        hospital_id=unit.caller.org_id,
        reference=reference,
        his_reference=body.his_reference if body is not None else None,
    )


@router.get(
    "/no-show-bars",
    response_model=NoShowBarList,
    **operation("listNoShowBars", "List no-show bars in the region", problems=["invalid_cursor"]),
)
async def list_bars(
    unit: Commission,
    hospital_id: QueryId = None,
    active: bool | None = None,
    cursor: CursorQuery = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> NoShowBarList:
    """No-show bars at the hospitals of the commission's region, newest first (R13)."""
    before = decode_id_cursor(cursor)
    items, following = await service.list_bars(
        session=unit.session,
        actor=unit.actor,
        crypto=unit.crypto,
        region_code=unit.caller.region_code,
        hospital_id=hospital_id,
        active=active,
        before_id=before,
        limit=limit,
    )
    return NoShowBarList(items=items, next_cursor=encode_cursor(following) if following is not None else None)


@router.post(
    "/no-show-bars/{bar_id}/lift",
    response_model=NoShowBarOut,
    **operation(
        "liftNoShowBar",
        "Lift a no-show bar",
        problems=["bar_not_found", "bar_already_lifted", "bar_ended"],
    ),
)
async def lift_bar(bar_id: PathId, body: LiftIn, unit: Commission) -> NoShowBarOut:
    """The commission lifts a bar, with a reason that is recorded (R13)."""
    return await service.lift_bar(
        session=unit.session,
        actor=unit.actor,
        crypto=unit.crypto,
        region_code=unit.caller.region_code,
        bar_id=bar_id,
        reason=body.reason,
    )
