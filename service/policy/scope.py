"""Who may book whose pool (R3, R7): the scope of the policy in force, per resource kind (R18).

Booking, the search of bookable slots and FHIR's visible pools all answer to these rules.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.errors import Problem
from service.kit.regions import city_of, province_of
from service.models.policy import HospitalPolicy, Policy
from service.models.registry import Alliance, AllianceMember, Organisation
from service.policy.service import policy_in_force


async def _alliance_members(session: AsyncSession, hospital_id: int) -> set[int]:
    rows = await session.scalars(
        select(AllianceMember.organisation_id)
        .join(Alliance, Alliance.id == AllianceMember.alliance_id)
        .where(Alliance.lead_hospital_id == hospital_id)
    )
    return set(rows)


def scope_admits(scope: str, hospital: Organisation, booker: Organisation, members: set[int]) -> bool:
    """Whether ``booker`` may book ``hospital``'s pool under ``scope`` (R3, R7)."""
    if scope == "by_tier":
        scope = "jurisdiction" if hospital.hospital_tier == "county" else "city"
    if scope == "lower_tier":
        return (
            booker.kind == "hospital"
            and booker.hospital_tier in ("city", "county")
            and province_of(booker.region_code) == province_of(hospital.region_code)
        )
    if booker.kind != "primary":
        return False
    if scope == "city":
        return city_of(booker.region_code) == city_of(hospital.region_code)
    if scope == "jurisdiction":
        return booker.region_code == hospital.region_code
    if scope == "alliance":
        return booker.id in members
    return False


async def admits(
    *, session: AsyncSession, policy: Policy, hospital: Organisation, booker: Organisation
) -> bool:
    """Whether ``policy``, in force at ``hospital``, lets ``booker`` book its pool (R3, R7)."""
    members = await _alliance_members(session, hospital.id) if policy.scope == "alliance" else set()
    return scope_admits(policy.scope, hospital, booker, members)


async def pools_in_scope(*, session: AsyncSession, booker: Organisation, on: date) -> list[tuple[int, str]]:
    """Every (hospital, resource kind) pool ``booker`` may book under the kind's policy in force on ``on``.

    Each kind has its own policy (R18), hence its own scope: a hospital may open its CT
    pool city-wide and its outpatient pool to its alliance only.
    """
    rows = (
        await session.execute(
            select(Organisation, HospitalPolicy.resource_kind)
            .join(HospitalPolicy, HospitalPolicy.hospital_id == Organisation.id)
            .order_by(Organisation.id, HospitalPolicy.resource_kind)
        )
    ).all()
    allowed: list[tuple[int, str]] = []
    for hospital, kind in rows:
        try:
            policy = await policy_in_force(session=session, hospital_id=hospital.id, on=on, kind=kind)
        except Problem:
            continue
        if await admits(session=session, policy=policy, hospital=hospital, booker=booker):
            allowed.append((hospital.id, kind))
    return allowed
