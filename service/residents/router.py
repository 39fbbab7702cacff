"""The signing platform (or an institution) syncs family-doctor contracts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from service.abuse.bounds import refuse_if_too_many
from service.context import Caller
from service.deps import State, actor_for, require
from service.residents import service
from service.residents.schemas import MAX_SYNC_CONTRACTS, ContractSync, ContractSyncResult

router = APIRouter(prefix="/v1", tags=["residents"])


@router.post("/contracts/sync", response_model=ContractSyncResult)
async def sync_contracts(
    body: ContractSync,
    request: Request,
    state: State,
    caller: Annotated[Caller, Depends(require("platform", "primary"))],
) -> ContractSyncResult:
    """Upsert signed residents and their contracts; invalid rows are reported one by one."""
    refuse_if_too_many("contracts", len(body.contracts), MAX_SYNC_CONTRACTS)
    actor = actor_for(request, state, caller)
    return await state.db.run(
        lambda s: service.sync_contracts(
            session=s, actor=actor, caller=caller, crypto=state.crypto, rows=body.contracts
        )
    )
