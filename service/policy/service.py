"""Publishing, assigning and looking up policies."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.context import Actor
from service.errors import Conflict, NotFound, Unprocessable
from service.policy.models import HospitalPolicy, Policy
from service.policy.presets import PRESETS
from service.registry.models import Organisation


async def install_presets(*, session: AsyncSession, actor: Actor) -> int:
    """Insert each built-in preset that is not there yet; returns how many were added."""
    added = 0
    for preset in PRESETS:
        exists = await session.scalar(
            select(Policy.id).where(Policy.code == preset["code"], Policy.version == preset["version"])
        )
        if exists is None:
            session.add(Policy(**preset, created_at=actor.now))
            added += 1
    await session.flush()
    return added


async def publish_policy(*, session: AsyncSession, actor: Actor, fields: dict[str, Any]) -> Policy:
    """Add the next version of a policy code; a code keeps the resource kind it was first published with."""
    fields = {"resource_kind": "outpatient", **fields}
    latest = await session.scalar(select(func.max(Policy.version)).where(Policy.code == fields["code"]))
    kind = await _kind_of(session, fields["code"])
    if kind is not None and kind != fields["resource_kind"]:
        raise Unprocessable(
            "policy_kind_changed",
            f"Policy {fields['code']!r} governs {kind} slots; publish another code for another kind.",
        )
    policy = Policy(**fields, version=(latest or 0) + 1, created_at=actor.now)
    session.add(policy)
    await session.flush()
    return policy


async def _kind_of(session: AsyncSession, code: str) -> str | None:
    return await session.scalar(select(Policy.resource_kind).where(Policy.code == code).limit(1))


async def assign_policy(*, session: AsyncSession, actor: Actor, hospital_id: int, policy_code: str) -> None:
    """Make ``policy_code`` the hospital's policy for the code's own resource kind."""
    hospital = await session.get(Organisation, hospital_id)
    if hospital is None or hospital.kind != "hospital":
        raise NotFound("hospital_not_found", f"No hospital {hospital_id}.")
    kind = await _kind_of(session, policy_code)
    if kind is None:
        raise Unprocessable("policy_not_found", f"No policy with code {policy_code!r}.")
    row = await session.get(HospitalPolicy, (hospital_id, kind))
    if row is None:
        session.add(
            HospitalPolicy(
                hospital_id=hospital_id, resource_kind=kind, policy_code=policy_code, assigned_at=actor.now
            )
        )
    else:
        row.policy_code = policy_code
        row.assigned_at = actor.now
    await session.flush()


async def policy_in_force(*, session: AsyncSession, hospital_id: int, on: date, kind: str) -> Policy:
    """The version of the hospital's ``kind`` policy in force on ``on`` (latest effective_from <= on)."""
    policy = await session.scalar(
        select(Policy)
        .join(
            HospitalPolicy,
            (HospitalPolicy.policy_code == Policy.code)
            & (HospitalPolicy.resource_kind == Policy.resource_kind),
        )
        .where(
            HospitalPolicy.hospital_id == hospital_id,
            HospitalPolicy.resource_kind == kind,
            Policy.effective_from <= on,
        )
        .order_by(Policy.effective_from.desc(), Policy.version.desc())
        .limit(1)
    )
    if policy is None:
        raise Conflict(
            "no_policy",
            f"Hospital {hospital_id} has no {kind} policy in force on {on.isoformat()}; "
            "the commission must assign one before these slots can be pooled.",
        )
    return policy


async def list_policies(*, session: AsyncSession) -> list[Policy]:
    return list(await session.scalars(select(Policy).order_by(Policy.code, Policy.version)))


def policy_out(policy: Policy) -> dict[str, Any]:
    return {
        "id": policy.id,
        "code": policy.code,
        "version": policy.version,
        "name": policy.name,
        "resource_kind": policy.resource_kind,
        "effective_from": policy.effective_from,
        "ratio": policy.ratio,
        "ratio_base": policy.ratio_base,
        "min_senior_share": policy.min_senior_share,
        "lead_minutes": policy.lead_minutes,
        "scope": policy.scope,
        "disease_prefixes": policy.disease_prefixes,
        "preferred_specialties": policy.preferred_specialties,
        "consultation_max_age_hours": policy.consultation_max_age_hours,
        "cancel_cutoff_minutes": policy.cancel_cutoff_minutes,
        "cancel_hotline": policy.cancel_hotline,
        "no_show_rule": policy.no_show_rule,
        "signal_thresholds": policy.signal_thresholds,
        "source": policy.source,
        "doctor_hourly_limit": policy.doctor_hourly_limit,
        "doctor_daily_limit": policy.doctor_daily_limit,
        "institution_share_limit": policy.institution_share_limit,
        "resident_active_limit": policy.resident_active_limit,
    }
