"""Identity name conflicts, the commission's side: institutions that declare different names for one ID number.

Contract syncs record the conflicts (``service.residents.conflicts``); here the commission
lists them, reads their evidence (institutions, contract numbers and masked names, never an
ID number or a whole name) and acknowledges them.
"""

from __future__ import annotations

from sqlalchemy import Select, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.kit.context import Actor
from service.kit.errors import NotFound
from service.kit.regions import within
from service.models.registry import Organisation
from service.models.residents import FamilyDoctorContract
from service.models.signals import IdentityConflict, IdentityConflictParty
from service.referrals.schemas import NamedRef
from service.residents.conflicts import SIGNAL
from service.signals.schemas import ConflictParty, IdentityConflictOut
from service.signals.service import mark_acknowledged


def _in_region(region_code: str) -> Select[IdentityConflict]:
    """Conflicts with at least one declaring institution in the commission's region."""
    party_in_region = exists(
        select(IdentityConflictParty.conflict_id)
        .join(Organisation, Organisation.id == IdentityConflictParty.institution_id)
        .where(
            IdentityConflictParty.conflict_id == IdentityConflict.id,
            within(Organisation.region_code, region_code),
        )
    )
    return select(IdentityConflict).where(party_in_region)


async def list_identity_conflicts(
    *,
    session: AsyncSession,
    region_code: str,
    status: str | None,
    institution_id: int | None,
    before_id: int | None,
    limit: int,
) -> tuple[list[IdentityConflict], int | None]:
    """Name conflicts of the region, newest first; the id of the last one when more follow."""
    stmt = _in_region(region_code).order_by(IdentityConflict.id.desc()).limit(limit + 1)
    if status is not None:
        stmt = stmt.where(IdentityConflict.status == status)
    if institution_id is not None:
        stmt = stmt.where(
            exists(
                select(IdentityConflictParty.conflict_id).where(
                    IdentityConflictParty.conflict_id == IdentityConflict.id,
                    IdentityConflictParty.institution_id == institution_id,
                )
            )
        )
    if before_id is not None:
        stmt = stmt.where(IdentityConflict.id < before_id)
    rows = list(await session.scalars(stmt))
    following = rows[limit - 1].id if len(rows) > limit else None
    return rows[:limit], following


async def get_identity_conflict(
    *, session: AsyncSession, region_code: str, conflict_id: int, lock: bool = False
) -> IdentityConflict:
    stmt = _in_region(region_code).where(IdentityConflict.id == conflict_id)
    if lock:
        stmt = stmt.with_for_update(of=IdentityConflict)
    conflict = await session.scalar(stmt)
    if conflict is None:
        raise NotFound("identity_conflict_not_found", f"No identity conflict {conflict_id} in your region.")
    return conflict


async def acknowledge_identity_conflict(
    *, session: AsyncSession, actor: Actor, region_code: str, conflict_id: int, note: str | None
) -> IdentityConflict:
    """The commission has seen the conflict; it stays live until the declarations agree."""
    conflict = await get_identity_conflict(
        session=session, region_code=region_code, conflict_id=conflict_id, lock=True
    )
    mark_acknowledged(conflict, actor, note, what=f"Identity conflict {conflict_id}")
    await session.flush()
    await record(
        session=session,
        actor=actor,
        action="identity_conflict.acknowledged",
        code=conflict.signal,
        resident_id=conflict.resident_id,
        reason=note,
        detail={"conflict_id": conflict.id},
    )
    return conflict


async def record_conflict_read(
    *, session: AsyncSession, actor: Actor, conflicts: list[IdentityConflict]
) -> None:
    """Evidence names residents (masked): every read is on the audit trail, one entry per request."""
    if not conflicts:
        return
    await record(
        session=session,
        actor=actor,
        action="identity_conflicts.read",
        detail={
            "conflict_ids": [c.id for c in conflicts],
            "resident_ids": sorted({c.resident_id for c in conflicts}),
        },
    )


async def conflicts_out(
    *, session: AsyncSession, conflicts: list[IdentityConflict]
) -> list[IdentityConflictOut]:
    """Conflicts with who declared which masked name under which contract."""
    ids = [c.id for c in conflicts]
    rows = (
        await session.execute(
            select(IdentityConflictParty, FamilyDoctorContract.contract_no, Organisation)
            .join(FamilyDoctorContract, FamilyDoctorContract.id == IdentityConflictParty.contract_id)
            .join(Organisation, Organisation.id == IdentityConflictParty.institution_id)
            .where(IdentityConflictParty.conflict_id.in_(ids))
            .order_by(IdentityConflictParty.conflict_id, IdentityConflictParty.contract_id)
        )
    ).all()
    parties: dict[int, list[ConflictParty]] = {}
    for party, contract_no, org in rows:
        parties.setdefault(party.conflict_id, []).append(
            ConflictParty(
                institution=NamedRef(id=org.id, code=org.code, name=org.name),
                contract_no=contract_no,
                name_masked=party.name_masked,
                declared_at=party.declared_at,
            )
        )
    return [
        IdentityConflictOut(
            id=c.id,
            signal=SIGNAL,
            status=c.status,
            first_seen_at=c.first_seen_at,
            last_seen_at=c.last_seen_at,
            closed_at=c.closed_at,
            acknowledged_at=c.acknowledged_at,
            acknowledgement_note=c.acknowledgement_note,
            declarations=parties.get(c.id, []),
        )
        for c in conflicts
    ]
