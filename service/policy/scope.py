"""Who may book whose pool (R3, R7): the scope of the policy in force, per resource kind (R18).

Booking, the search of bookable slots and FHIR's visible pools all answer to these rules.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import date

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.regions import city_of, province_of
from service.models.policy import HospitalPolicy, Policy
from service.models.registry import Alliance, AllianceMember, Organisation


def scope_admits(scope: str, hospital: Organisation, booker: Organisation, in_alliance: bool) -> bool:
    """Whether ``booker`` may book ``hospital``'s pool under ``scope`` (R3, R7); ``in_alliance``:
    the booker belongs to an alliance that ``hospital`` leads."""
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
        return in_alliance
    return False


async def policies_in_force(
    *, session: AsyncSession, on: date, hospital_ids: Collection[int] | None = None
) -> dict[tuple[int, str], Policy]:
    """The policy version in force on ``on`` for every (hospital, resource kind), in one query.

    The same choice as ``policy_in_force`` (latest ``effective_from``, then version), for
    all hospitals at once; a pair with no version in force yet is absent.
    """
    stmt = (
        select(HospitalPolicy.hospital_id, HospitalPolicy.resource_kind, Policy)
        .join(
            Policy,
            (Policy.code == HospitalPolicy.policy_code)
            & (Policy.resource_kind == HospitalPolicy.resource_kind),
        )
        .where(Policy.effective_from <= on)
        .ext(distinct_on(HospitalPolicy.hospital_id, HospitalPolicy.resource_kind))
        .order_by(
            HospitalPolicy.hospital_id,
            HospitalPolicy.resource_kind,
            Policy.effective_from.desc(),
            Policy.version.desc(),
        )
    )
    if hospital_ids is not None:
        stmt = stmt.where(HospitalPolicy.hospital_id.in_(list(hospital_ids)))
    return {(hospital_id, kind): policy for hospital_id, kind, policy in (await session.execute(stmt)).all()}


async def alliance_leads(session: AsyncSession, booker_id: int) -> set[int]:
    """The hospitals leading an alliance that ``booker_id`` belongs to: whose alliance pools it may book."""
    rows = await session.scalars(
        select(Alliance.lead_hospital_id)
        .join(AllianceMember, AllianceMember.alliance_id == Alliance.id)
        .where(AllianceMember.organisation_id == booker_id)
    )
    return set(rows)


def admitted(policy: Policy, hospital: Organisation, booker: Organisation, leads: set[int]) -> bool:
    """Whether ``policy``, in force at ``hospital``, lets ``booker`` book its pool (R3, R7), given the
    hospitals leading an alliance the booker belongs to (``alliance_leads``)."""
    return scope_admits(policy.scope, hospital, booker, hospital.id in leads)


async def pools_in_scope(*, session: AsyncSession, booker: Organisation, on: date) -> list[tuple[int, str]]:
    """Every (hospital, resource kind) pool ``booker`` may book under the kind's policy in force on ``on``.

    Each kind has its own policy (R18), hence its own scope: a hospital may open its CT
    pool city-wide and its outpatient pool to its alliance only. Three queries, however
    many hospitals the region holds.
    """
    hospitals = {
        org.id: org
        for org in await session.scalars(
            select(Organisation).where(
                Organisation.id.in_(select(HospitalPolicy.hospital_id).scalar_subquery())
            )
        )
    }
    in_force = await policies_in_force(session=session, on=on)
    leads = await alliance_leads(session, booker.id)
    return [
        (hospital_id, kind)
        for (hospital_id, kind), policy in sorted(in_force.items())
        if hospital_id in hospitals and admitted(policy, hospitals[hospital_id], booker, leads)
    ]
