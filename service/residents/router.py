"""The signing platform (or an institution) syncs family-doctor contracts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from service.abuse.bounds import refuse_if_too_many
from service.deps import State, actor_for, require
from service.kit.context import Caller
from service.residents import service
from service.residents.schemas import (
    MAX_SYNC_CONTRACTS,
    ContractSourceIn,
    ContractSourceOut,
    ContractSync,
    ContractSyncResult,
)

router = APIRouter(prefix="/v1", tags=["residents"])
PROBLEM = {"content": {"application/problem+json": {}}, "description": "Refused: see `code`."}
RegionCode = Annotated[str, Path(pattern="^[0-9]{6}$", description="A GB/T 2260 division code.")]


@router.post("/contracts/sync", response_model=ContractSyncResult, responses={403: PROBLEM})
async def sync_contracts(
    body: ContractSync,
    request: Request,
    state: State,
    caller: Annotated[Caller, Depends(require("platform", "primary"))],
) -> ContractSyncResult:
    """Upsert signed residents and their contracts; invalid rows are reported one by one.

    Each contract keeps the name its institution declared. In a region that takes contracts
    from its signing platform only, a primary institution's sync is refused (403
    ``contracts_platform_only``).
    """
    refuse_if_too_many("contracts", len(body.contracts), MAX_SYNC_CONTRACTS)
    actor = actor_for(request, state, caller)
    return await state.db.run(
        lambda s: service.sync_contracts(
            session=s, actor=actor, caller=caller, crypto=state.crypto, rows=body.contracts
        )
    )


@router.get("/regions/{region_code}/contract-source", response_model=ContractSourceOut)
async def get_contract_source(
    region_code: RegionCode,
    state: State,
    caller: Annotated[Caller, Depends(require("commission", "platform", "primary"))],
) -> ContractSourceOut:
    """Whether this division takes contracts from its signing platform only, and which setting decides."""
    return await state.db.run(lambda s: service.contract_source_for(session=s, region_code=region_code))


@router.put(
    "/regions/{region_code}/contract-source",
    response_model=ContractSourceOut,
    responses={403: PROBLEM, 404: PROBLEM},
)
async def set_contract_source(
    region_code: RegionCode,
    body: ContractSourceIn,
    request: Request,
    state: State,
    caller: Annotated[Caller, Depends(require("commission"))],
) -> ContractSourceOut:
    """The commission sets where contracts come from for a division of its region and those below it."""
    actor = actor_for(request, state, caller)
    return await state.db.run(
        lambda s: service.set_contract_source(
            session=s, actor=actor, caller=caller, region_code=region_code, source=body.source
        )
    )
