"""The commission sets up the region; every caller can ask who it is."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.deps import State, actor_for, authenticate, require
from service.kit.context import Caller
from service.kit.errors import NotFound
from service.kit.ids import PathId
from service.models.registry import AllianceMember, Organisation
from service.registry import service
from service.registry.schemas import (
    AllianceIn,
    AllianceOut,
    Me,
    OpeningHoursIn,
    OrganisationIn,
    OrganisationList,
    OrganisationOut,
    RegionBatch,
)

router = APIRouter(prefix="/v1", tags=["registry"])
Commission = Annotated[Caller, Depends(require("commission"))]


@router.get("/me", response_model=Me)
async def me(state: State, caller: Annotated[Caller, Depends(authenticate)]) -> Me:
    """The calling client, its role and its organisation."""
    async with state.db.sessionmaker() as session:
        org = await session.get(Organisation, caller.org_id)
    if org is None:
        raise NotFound("organisation_not_found", "Your organisation no longer exists.")
    return Me(client_id=caller.client_id, role=caller.role, organisation=service.organisation_out(org))


OUT_OF_REGION: dict[int | str, dict[str, Any]] = {
    403: {"content": {"application/problem+json": {}}, "description": "`out_of_region`: not in your region."}
}


@router.post("/regions", status_code=204, responses=OUT_OF_REGION)
async def upsert_regions(body: RegionBatch, request: Request, state: State, caller: Commission) -> None:
    """Insert or rename GB/T 2260 divisions inside the commission's region."""
    actor = actor_for(request, state, caller)
    await state.db.run(
        lambda s: service.upsert_regions(
            session=s, actor=actor, regions=body.regions, area=caller.region_code
        )
    )


@router.post("/organisations", response_model=OrganisationOut, status_code=201, responses=OUT_OF_REGION)
async def create_organisation(
    body: OrganisationIn, request: Request, state: State, caller: Commission
) -> OrganisationOut:
    """Register a hospital, a primary institution or an authority of the commission's region."""
    actor = actor_for(request, state, caller)
    org = await state.db.run(
        lambda s: service.create_organisation(session=s, actor=actor, org=body, area=caller.region_code)
    )
    return service.organisation_out(org)


@router.put(
    "/organisations/{organisation_id}/opening-hours",
    response_model=OrganisationOut,
    responses={404: {"content": {"application/problem+json": {}}, "description": "Not in your region."}},
)
async def set_opening_hours(
    organisation_id: PathId, body: OpeningHoursIn, request: Request, state: State, caller: Commission
) -> OrganisationOut:
    """The commission records an institution's opening hours (R14: off-hours consultations)."""
    actor = actor_for(request, state, caller)
    org = await state.db.run(
        lambda s: service.set_opening_hours(
            session=s,
            actor=actor,
            region_code=caller.region_code,
            organisation_id=organisation_id,
            hours=body,
        )
    )
    return service.organisation_out(org)


@router.get("/organisations", response_model=OrganisationList)
async def list_organisations(
    state: State,
    caller: Annotated[Caller, Depends(authenticate)],
    kind: Annotated[str | None, Query(pattern="^(hospital|primary|authority)$")] = None,
) -> OrganisationList:
    """Organisations (public registry data, no personal data)."""
    stmt = select(Organisation).order_by(Organisation.id)
    if kind:
        stmt = stmt.where(Organisation.kind == kind)
    async with state.db.sessionmaker() as session:
        rows = await session.scalars(stmt)
        return OrganisationList(items=[service.organisation_out(o) for o in rows])


@router.post("/alliances", response_model=AllianceOut, status_code=201, responses=OUT_OF_REGION)
async def create_alliance(
    body: AllianceIn, request: Request, state: State, caller: Commission
) -> AllianceOut:
    """Register a medical alliance: a lead hospital and its members, all in the commission's region."""
    actor = actor_for(request, state, caller)

    async def work(session: AsyncSession) -> AllianceOut:
        alliance = await service.create_alliance(
            session=session, actor=actor, alliance=body, area=caller.region_code
        )
        members = await session.scalars(
            select(AllianceMember.organisation_id).where(AllianceMember.alliance_id == alliance.id)
        )
        return AllianceOut(
            id=alliance.id,
            name=alliance.name,
            lead_hospital_id=alliance.lead_hospital_id,
            member_ids=sorted(members),
        )

    return await state.db.run(work)
