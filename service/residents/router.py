"""The signing platform (or an institution) syncs family-doctor contracts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from service.abuse.bounds import refuse_if_too_many
from service.residents import service
from service.residents.schemas import (
    MAX_SYNC_CONTRACTS,
    ContractSourceIn,
    ContractSourceOut,
    ContractSync,
    ContractSyncResult,
)
from service.web.contract import operation
from service.web.unit import Unit, UnitRoute, reads, writes

router = APIRouter(prefix="/v1", tags=["residents"], route_class=UnitRoute)
RegionCode = Annotated[str, Path(pattern="^[0-9]{6}$", description="A GB/T 2260 division code.")]


@router.post(
    "/contracts/sync",
    response_model=ContractSyncResult,
    **operation(
        "syncContracts",
        "Sync family-doctor contracts",
        problems=["too_many_items", "contracts_platform_only"],
    ),
)
async def sync_contracts(
    body: ContractSync, unit: Annotated[Unit, writes("platform", "primary")]
) -> ContractSyncResult:
    """Upsert signed residents and their contracts; invalid rows are reported one by one.

    Each contract keeps the name its institution declared. In a region that takes contracts
    from its signing platform only, a primary institution's sync is refused (403
    ``contracts_platform_only``).
    """
    refuse_if_too_many("contracts", len(body.contracts), MAX_SYNC_CONTRACTS)
    return await service.sync_contracts(
        session=unit.session, actor=unit.actor, caller=unit.caller, crypto=unit.crypto, rows=body.contracts
    )


@router.get(
    "/regions/{region_code}/contract-source",
    response_model=ContractSourceOut,
    **operation("getContractSource", "Read where a division's contracts come from"),
)
async def get_contract_source(
    region_code: RegionCode, unit: Annotated[Unit, reads("commission", "platform", "primary")]
) -> ContractSourceOut:
    """Whether this division takes contracts from its signing platform only, and which setting decides."""
    return await service.contract_source_for(session=unit.session, region_code=region_code)


@router.put(
    "/regions/{region_code}/contract-source",
    response_model=ContractSourceOut,
    **operation(
        "setContractSource",
        "Set where a division's contracts come from",
        problems=["region_out_of_scope", (404, "region_not_found")],
    ),
)
async def set_contract_source(
    region_code: RegionCode, body: ContractSourceIn, unit: Annotated[Unit, writes("commission")]
) -> ContractSourceOut:
    """The commission sets where contracts come from for a division of its region and those below it."""
    return await service.set_contract_source(
        session=unit.session,
        actor=unit.actor,
        caller=unit.caller,
        region_code=region_code,
        source=body.source,
    )
