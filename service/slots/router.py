"""A HIS pushes its sessions and reads its shortfalls; the commission reads everyone's."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.abuse.bounds import refuse_if_too_many
from service.context import Caller
from service.deps import State, actor_for, require
from service.ids import QueryId
from service.regions import covers
from service.registry.models import Organisation
from service.slots import service
from service.slots.schemas import (
    MAX_PUSH_SESSIONS,
    MAX_PUSH_SLOTS,
    PushResult,
    SessionPush,
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
    date_from: date | None = None,
    date_to: date | None = None,
) -> ShortfallList:
    """This hospital's unmet rules, per department and day."""
    return await _shortfalls(state, [caller.org_id], date_from, date_to)


@router.get("/shortfalls", response_model=ShortfallList)
async def region_shortfalls(
    state: State,
    caller: Annotated[Caller, Depends(require("commission"))],
    date_from: date | None = None,
    date_to: date | None = None,
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
