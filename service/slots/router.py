"""A HIS pushes its sessions and reads its shortfalls; the commission reads everyone's."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.abuse.bounds import refuse_if_too_many
from service.kit.bounds import Day
from service.kit.cursors import CursorQuery, decode_id_cursor
from service.kit.ids import PathId, QueryId
from service.slots import listing, removal, service, shortfalls
from service.slots.schemas import (
    MAX_PUSH_SESSIONS,
    MAX_PUSH_SLOTS,
    PushResult,
    SessionPush,
    SessionRemoved,
    SessionStateList,
    ShortfallList,
)
from service.web.contract import operation
from service.web.unit import Unit, UnitRoute, reads, writes

router = APIRouter(prefix="/v1", tags=["slots"], route_class=UnitRoute)


@router.post(
    "/hospital/sessions",
    response_model=PushResult,
    **operation("pushSessions", "Push sessions and their slots", problems=["too_many_items"]),
)
async def push_sessions(body: SessionPush, unit: Annotated[Unit, writes("hospital")]) -> PushResult:
    """Create, update or withdraw clinic sessions; answers with the slots now held for the pool.

    One push holds at most 500 sessions and 20,000 slots (422 `too_many_items` beyond).
    """
    refuse_if_too_many("sessions", len(body.sessions), MAX_PUSH_SESSIONS)
    refuse_if_too_many("slots", sum(len(s.slots) for s in body.sessions), MAX_PUSH_SLOTS)
    return await service.push_hospital_sessions(
        session=unit.session,
        actor=unit.actor,
        crypto=unit.crypto,
        hospital_id=unit.caller.org_id,
        items=body.sessions,
    )


@router.get(
    "/hospital/sessions",
    response_model=SessionStateList,
    **operation(
        "listHospitalSessions",
        "List the hospital's sessions of a day with their slots' pool state",
        problems=["invalid_cursor"],
    ),
)
async def list_own_sessions(
    service_date: Day,
    unit: Annotated[Unit, reads("hospital")],
    department_code: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    cursor: CursorQuery = None,
    limit: Annotated[int, Query(ge=1, le=listing.MAX_SESSIONS_PAGE)] = 20,
) -> SessionStateList:
    """This hospital's sessions of one service date, each with its slots and their pool state.

    What the pool holds now (the reservation is re-chosen for the whole department-day at every
    push until its pool window opens): `reserved` and `booked` slots are the pool's, do not sell
    them before `public_at`. Only the calling hospital's sessions; removed sessions and withdrawn
    slots are left out. At most 50 sessions a page, by session ID; pass `next_cursor` back as
    `cursor` for the next page.
    """
    return await listing.list_hospital_sessions(
        session=unit.session,
        hospital_id=unit.caller.org_id,
        service_date=service_date,
        department_code=department_code,
        after=decode_id_cursor(cursor),
        limit=limit,
    )


Reason = Annotated[
    str, Query(min_length=1, max_length=500, description="Why the session is removed; audited and sent on.")
]


@router.delete(
    "/hospital/sessions/{session_id}",
    response_model=SessionRemoved,
    **operation("removeOwnSession", "Remove a session pushed in error", problems=["session_not_found"]),
)
async def remove_own_session(
    session_id: PathId, reason: Reason, unit: Annotated[Unit, writes("hospital")]
) -> SessionRemoved:
    """Remove a session of this hospital pushed in error (e.g. a wrong date).

    Its booked referrals are cancelled as by a withdrawal (停诊), its slots leave every view, and
    its session ID is free for the corrected push. ``session_id`` is the push result's.
    """
    return await removal.remove_session(
        session=unit.session,
        actor=unit.actor,
        crypto=unit.crypto,
        session_id=session_id,
        hospital_id=unit.caller.org_id,
        region_code=None,
        reason=reason,
    )


@router.delete(
    "/sessions/{session_id}",
    response_model=SessionRemoved,
    **operation(
        "removeRegionSession",
        "Remove a session of the region pushed in error",
        problems=["session_not_found"],
    ),
)
async def remove_region_session(
    session_id: PathId, reason: Reason, unit: Annotated[Unit, writes("commission")]
) -> SessionRemoved:
    """Remove a session pushed in error by a hospital of the commission's region (its FHIR Schedule id)."""
    return await removal.remove_session(
        session=unit.session,
        actor=unit.actor,
        crypto=unit.crypto,
        session_id=session_id,
        hospital_id=None,
        region_code=unit.caller.region_code,
        reason=reason,
    )


@router.get(
    "/hospital/shortfalls",
    response_model=ShortfallList,
    **operation("listOwnShortfalls", "List this hospital's shortfalls"),
)
async def own_shortfalls(
    unit: Annotated[Unit, reads("hospital")], date_from: Day | None = None, date_to: Day | None = None
) -> ShortfallList:
    """This hospital's unmet rules, per department and day."""
    return await shortfalls.list_shortfalls(
        session=unit.session, date_from=date_from, date_to=date_to, hospital_id=unit.caller.org_id
    )


@router.get(
    "/shortfalls",
    response_model=ShortfallList,
    **operation("listRegionShortfalls", "List the region's shortfalls"),
)
async def region_shortfalls(
    unit: Annotated[Unit, reads("commission")],
    date_from: Day | None = None,
    date_to: Day | None = None,
    hospital_id: QueryId = None,
) -> ShortfallList:
    """Unmet rules of every hospital in the commission's region."""
    return await shortfalls.list_shortfalls(
        session=unit.session,
        date_from=date_from,
        date_to=date_to,
        hospital_id=hospital_id,
        region_code=unit.caller.region_code,
    )
