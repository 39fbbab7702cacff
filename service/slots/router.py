"""A HIS pushes its sessions and reads its shortfalls; the commission reads everyone's."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.abuse.bounds import refuse_if_too_many
from service.deps import AppState, State, actor_for, require
from service.kit.bounds import Day
from service.kit.context import Caller
from service.kit.ids import PathId, QueryId
from service.kit.regions import covers
from service.models.registry import Organisation
from service.slots import service
from service.slots.schemas import (
    MAX_PUSH_SESSIONS,
    MAX_PUSH_SLOTS,
    PushResult,
    SessionPush,
    SessionRemoved,
    SessionResult,
    ShortfallList,
    ShortfallRow,
)

router = APIRouter(prefix="/v1", tags=["slots"])


@router.post(
    "/hospital/sessions",
    response_model=PushResult,
    responses={422: {"content": {"application/problem+json": {}}, "description": "Refused: see `code`."}},
)
async def push_sessions(
    body: SessionPush,
    request: Request,
    state: State,
    caller: Annotated[Caller, Depends(require("hospital"))],
) -> PushResult:
    """Create, update or withdraw clinic sessions; answers with the slots now held for the pool.

    One push holds at most 500 sessions and 20,000 slots (422 `too_many_items` beyond).
    """
    refuse_if_too_many("sessions", len(body.sessions), MAX_PUSH_SESSIONS)
    refuse_if_too_many("slots", sum(len(s.slots) for s in body.sessions), MAX_PUSH_SLOTS)
    actor = actor_for(request, state, caller)

    async def work(session: AsyncSession) -> list[SessionResult]:
        hospital = await session.get(Organisation, caller.org_id)
        assert hospital is not None
        return await service.push_sessions(
            session=session, actor=actor, crypto=state.crypto, hospital=hospital, items=body.sessions
        )

    return PushResult(results=await state.db.run(work))


Reason = Annotated[
    str, Query(min_length=1, max_length=500, description="Why the session is removed; audited and sent on.")
]
PROBLEM = {"content": {"application/problem+json": {}}, "description": "Refused: see `code`."}


async def _remove(
    request: Request, state: AppState, caller: Caller, session_id: int, reason: str, *, own: bool
) -> SessionRemoved:
    actor = actor_for(request, state, caller)
    return await state.db.run(
        lambda session: service.remove_session(
            session=session,
            actor=actor,
            crypto=state.crypto,
            session_id=session_id,
            hospital_id=caller.org_id if own else None,
            region_code=None if own else caller.region_code,
            reason=reason,
        )
    )


@router.delete("/hospital/sessions/{session_id}", response_model=SessionRemoved, responses={404: PROBLEM})
async def remove_own_session(
    session_id: PathId,
    reason: Reason,
    request: Request,
    state: State,
    caller: Annotated[Caller, Depends(require("hospital"))],
) -> SessionRemoved:
    """Remove a session of this hospital pushed in error (e.g. a wrong date).

    Its booked referrals are cancelled as by a withdrawal (停诊), its slots leave every view, and
    its session ID is free for the corrected push. ``session_id`` is the push result's.
    """
    return await _remove(request, state, caller, session_id, reason, own=True)


@router.delete("/sessions/{session_id}", response_model=SessionRemoved, responses={404: PROBLEM})
async def remove_region_session(
    session_id: PathId,
    reason: Reason,
    request: Request,
    state: State,
    caller: Annotated[Caller, Depends(require("commission"))],
) -> SessionRemoved:
    """Remove a session pushed in error by a hospital of the commission's region (its FHIR Schedule id)."""
    return await _remove(request, state, caller, session_id, reason, own=False)


async def _shortfalls(
    state: State, hospital_ids: list[int] | None, date_from: date | None, date_to: date | None
) -> ShortfallList:
    async with state.db.sessionmaker() as session:
        rows = await service.list_shortfalls(
            session=session, hospital_ids=hospital_ids, date_from=date_from, date_to=date_to
        )
    return ShortfallList(
        items=[
            ShortfallRow(
                hospital_id=sf.hospital_id,
                department_code=dept.code,
                department_name=dept.name,
                service_date=sf.service_date,
                resource_kind=sf.resource_kind,
                kind=sf.kind,
                required=sf.required,
                actual=sf.actual,
                policy_code=policy.code,
                policy_version=policy.version,
                recorded_at=sf.recorded_at,
            )
            for sf, dept, policy in rows
        ]
    )


@router.get("/hospital/shortfalls", response_model=ShortfallList)
async def own_shortfalls(
    state: State,
    caller: Annotated[Caller, Depends(require("hospital"))],
    date_from: Day | None = None,
    date_to: Day | None = None,
) -> ShortfallList:
    """This hospital's unmet rules, per department and day."""
    return await _shortfalls(state, [caller.org_id], date_from, date_to)


@router.get("/shortfalls", response_model=ShortfallList)
async def region_shortfalls(
    state: State,
    caller: Annotated[Caller, Depends(require("commission"))],
    date_from: Day | None = None,
    date_to: Day | None = None,
    hospital_id: QueryId = None,
) -> ShortfallList:
    """Unmet rules of every hospital in the commission's region."""
    async with state.db.sessionmaker() as session:
        hospitals = await session.scalars(select(Organisation).where(Organisation.kind == "hospital"))
        ids = [
            h.id
            for h in hospitals
            if covers(caller.region_code, h.region_code) and (hospital_id is None or h.id == hospital_id)
        ]
    return await _shortfalls(state, ids, date_from, date_to)
