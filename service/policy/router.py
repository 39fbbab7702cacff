"""Policies: everyone reads them; the commission publishes versions and assigns them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from service.kit.ids import PathId
from service.policy import service
from service.policy.schemas import PolicyIn, PolicyList, PolicyOut
from service.registry.schemas import PolicyAssignment
from service.web.contract import operation
from service.web.unit import Unit, UnitRoute, reads, writes

router = APIRouter(prefix="/v1", tags=["policies"], route_class=UnitRoute)


@router.get("/policies", response_model=PolicyList, **operation("listPolicies", "List every policy version"))
async def list_policies(unit: Annotated[Unit, reads()]) -> PolicyList:
    """Every policy version."""
    rows = await service.list_policies(session=unit.session)
    return PolicyList(items=[PolicyOut(**service.policy_out(p)) for p in rows])


@router.post(
    "/policies",
    response_model=PolicyOut,
    status_code=201,
    **operation(
        "publishPolicy",
        "Publish a policy version",
        problems=["out_of_region", "policy_code_too_long", "policy_copy_taken", "policy_kind_changed"],
    ),
)
async def publish_policy(body: PolicyIn, unit: Annotated[Unit, writes("commission")]) -> PolicyOut:
    """Publish the next version of a policy code.

    A new code belongs to the commission's region. A built-in code, or one of another region,
    is copied on write: the answer's ``code`` is then the region's own copy, ``<code>-<region>``,
    and the region's hospitals that held the original now hold the copy (docs/authorization.md).
    """
    policy = await service.publish_policy(
        session=unit.session, actor=unit.actor, fields=body.model_dump(), area=unit.caller.region_code
    )
    return PolicyOut(**service.policy_out(policy))


@router.put(
    "/hospitals/{hospital_id}/policy",
    status_code=204,
    **operation(
        "assignPolicy",
        "Assign a policy to a hospital",
        problems=["hospital_not_found", "policy_not_found", "policy_of_another_region"],
    ),
)
async def assign_policy(
    hospital_id: PathId, body: PolicyAssignment, unit: Annotated[Unit, writes("commission")]
) -> None:
    """Assign a policy (by code) to a hospital of the commission's region."""
    await service.assign_policy(
        session=unit.session,
        actor=unit.actor,
        hospital_id=hospital_id,
        policy_code=body.policy_code,
        area=unit.caller.region_code,
    )
