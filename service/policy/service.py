"""Publishing, assigning and looking up policies."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.kit.context import Actor
from service.kit.db import advisory_key
from service.kit.errors import Conflict, Forbidden, NotFound, Unprocessable
from service.kit.regions import covers, within
from service.models.policy import HospitalPolicy, Policy
from service.models.registry import Organisation
from service.policy.presets import PRESETS
from service.policy.schemas import PolicyOut

PUBLISH_LOCK = advisory_key("policy", "publish")


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


def _policy_view(policy: Policy) -> dict[str, Any]:
    """A version as the trail records it (JSON)."""
    return {**PolicyOut(**policy_out(policy)).model_dump(mode="json"), "id": policy.id}


async def _latest(session: AsyncSession, code: str) -> Policy | None:
    return await session.scalar(
        select(Policy).where(Policy.code == code).order_by(Policy.version.desc()).limit(1)
    )


_COPY_SUFFIX = re.compile(r"-([0-9]{6})$")


def region_copy_code(code: str, owner: str | None, area: str) -> str:
    """The code of region ``area``'s own copy of ``code``: a copy of a copy names the base code."""
    base = code.removesuffix(f"-{owner}") if owner is not None else code
    return f"{base}-{area}"


async def publish_policy(
    *, session: AsyncSession, actor: Actor, fields: dict[str, Any], area: str | None = None
) -> Policy:
    """Add the next version of a policy code; a code keeps the resource kind it was first published with.

    ``area`` is the publishing commission's region (None: the operator, unscoped). A commission
    publishes in place a new code (which it then owns) or a code owned by a region it covers.
    A built-in code, or one owned by another region, is copied on write: the version goes to the
    region's own copy ``<code>-<region>``, which starts with the original's versions, and the
    region's hospitals that held the original move to the copy. Other regions are untouched.
    """
    fields = {"resource_kind": "outpatient", **fields}
    code = fields["code"]
    # Publishing is rare; one lock for all of it keeps the next version number and a region's
    # first copy (which touches two codes) from racing into a unique violation.
    await session.execute(select(func.pg_advisory_xact_lock(PUBLISH_LOCK)))
    latest = await _latest(session, code)
    suffix = _COPY_SUFFIX.search(code)
    if area is not None and latest is None and suffix and not covers(area, suffix.group(1)):
        # ``<code>-<region>`` names that region's copy: taking it first would block the copy.
        raise Forbidden(
            "out_of_region", f"Codes ending in -{suffix.group(1)} are that region's copies; choose another."
        )
    copied_from: str | None = None
    moved: list[int] = []
    if (
        area is not None
        and latest is not None
        and not (latest.region_code is not None and covers(area, latest.region_code))
    ):
        copied_from = code
        code = region_copy_code(code, latest.region_code, area)
        if len(code) > 64:
            raise Unprocessable(
                "policy_code_too_long", f"Your region's copy of {copied_from!r} would need a code over 64."
            )
        own = await _latest(session, code)
        if own is not None and own.region_code != area:
            raise Conflict("policy_copy_taken", f"Code {code!r} belongs to another region.")
        if own is None:
            await _copy_versions(session, actor, source=copied_from, code=code, area=area)
        fields["code"] = code
        latest = await _latest(session, code)
    kind = latest.resource_kind if latest is not None else None
    if kind is not None and kind != fields["resource_kind"]:
        raise Unprocessable(
            "policy_kind_changed",
            f"Policy {fields['code']!r} governs {kind} slots; publish another code for another kind.",
        )
    owner = latest.region_code if latest is not None else area
    policy = Policy(
        **fields,
        version=(latest.version if latest else 0) + 1,
        created_at=actor.now,
        region_code=owner,
    )
    session.add(policy)
    await session.flush()
    if copied_from is not None and area is not None:
        moved = await _move_region_hospitals(
            session, actor, area=area, kind=policy.resource_kind, source=copied_from, code=code
        )
    await record(
        session=session,
        actor=actor,
        action="policy.published",
        detail={
            "code": policy.code,
            "copied_from": copied_from,
            "moved_hospital_ids": moved,
            "before": _policy_view(latest) if latest is not None else None,
            "after": _policy_view(policy),
        },
    )
    return policy


async def _copy_versions(session: AsyncSession, actor: Actor, *, source: str, code: str, area: str) -> None:
    """The region's copy starts with every version of the original, so past dates keep their rules."""
    for original in await session.scalars(
        select(Policy).where(Policy.code == source).order_by(Policy.version)
    ):
        fields = {
            column.key: getattr(original, column.key)
            for column in Policy.__table__.columns
            if column.key not in ("id", "code", "created_at", "region_code")
        }
        session.add(Policy(**fields, code=code, created_at=actor.now, region_code=area))
    await session.flush()


async def _move_region_hospitals(
    session: AsyncSession, actor: Actor, *, area: str, kind: str, source: str, code: str
) -> list[int]:
    rows = await session.scalars(
        select(HospitalPolicy)
        .join(Organisation, Organisation.id == HospitalPolicy.hospital_id)
        .where(
            HospitalPolicy.policy_code == source,
            HospitalPolicy.resource_kind == kind,
            within(Organisation.region_code, area),
        )
        .order_by(HospitalPolicy.hospital_id)
        .with_for_update(of=HospitalPolicy)
    )
    moved = []
    for row in rows:
        row.policy_code = code
        row.assigned_at = actor.now
        moved.append(row.hospital_id)
        await record(
            session=session,
            actor=actor,
            action="policy.assigned",
            hospital_id=row.hospital_id,
            detail={
                "resource_kind": kind,
                "before": {"policy_code": source},
                "after": {"policy_code": code},
                "because": "copy_on_write",
            },
        )
    await session.flush()
    return moved


async def assign_policy(
    *,
    session: AsyncSession,
    actor: Actor,
    hospital_id: int,
    policy_code: str,
    area: str | None = None,
) -> None:
    """Make ``policy_code`` the hospital's policy for the code's own resource kind.

    A commission (``area`` set) assigns only to hospitals of its region, and only codes that are
    built-in or shared, or owned by a region that contains the hospital.
    """
    hospital = await session.get(Organisation, hospital_id)
    if (
        hospital is None
        or hospital.kind != "hospital"
        or (area is not None and not covers(area, hospital.region_code))
    ):
        raise NotFound("hospital_not_found", f"No hospital {hospital_id} in your region.")
    latest = await _latest(session, policy_code)
    if latest is None:
        raise Unprocessable("policy_not_found", f"No policy with code {policy_code!r}.")
    if latest.region_code is not None and not covers(latest.region_code, hospital.region_code):
        raise Forbidden(
            "policy_of_another_region",
            f"Policy {policy_code!r} belongs to region {latest.region_code}; publish your own code.",
        )
    kind = latest.resource_kind
    row = await session.get(HospitalPolicy, (hospital_id, kind), with_for_update=True)
    before = {"policy_code": row.policy_code} if row is not None else None
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
    await record(
        session=session,
        actor=actor,
        action="policy.assigned",
        hospital_id=hospital_id,
        detail={"resource_kind": kind, "before": before, "after": {"policy_code": policy_code}},
    )


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
        raise no_policy(hospital_id, kind, on)
    return policy


async def policies_in_force(
    *, session: AsyncSession, hospital_id: int, wanted: set[tuple[str, date]]
) -> dict[tuple[str, date], Policy | None]:
    """``policy_in_force`` for each (kind, day) of ``wanted`` in one query: None where none is."""
    kinds = {kind for kind, _ in wanted}
    versions = list(
        await session.scalars(
            select(Policy)
            .join(
                HospitalPolicy,
                (HospitalPolicy.policy_code == Policy.code)
                & (HospitalPolicy.resource_kind == Policy.resource_kind),
            )
            .where(HospitalPolicy.hospital_id == hospital_id, HospitalPolicy.resource_kind.in_(kinds))
            .order_by(Policy.effective_from.desc(), Policy.version.desc())
        )
    )
    return {
        (kind, on): next((p for p in versions if p.resource_kind == kind and p.effective_from <= on), None)
        for kind, on in wanted
    }


def no_policy(hospital_id: int, kind: str, on: date) -> Conflict:
    """409 ``no_policy``: the hospital's ``kind`` has no policy version in force on ``on``."""
    return Conflict(
        "no_policy",
        f"Hospital {hospital_id} has no {kind} policy in force on {on.isoformat()}; "
        "the commission must assign one before these slots can be pooled.",
    )


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
        "waitlist_offer_hold_minutes": policy.waitlist_offer_hold_minutes,
        "waitlist_urgent_priority": policy.waitlist_urgent_priority,
        "what_to_bring": policy.what_to_bring,
        "slip_id_keep_first": policy.slip_id_keep_first,
        "slip_id_keep_last": policy.slip_id_keep_last,
        "region_code": policy.region_code,
    }
