"""Identity name conflicts: institutions that declare different names for one ID number.

A contract sync never rewrites another institution's declaration (docs/identity.md).
When the declarations disagree, the commission gets one ``identity_name_conflict``
signal per resident while the disagreement lasts; its evidence names institutions,
contract numbers and masked names, never an ID number or a whole name.
"""

from __future__ import annotations

from sqlalchemy import Select, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.kit.clock import local_date
from service.kit.context import Actor
from service.kit.crypto import Crypto, mask_name
from service.kit.errors import NotFound
from service.kit.regions import within
from service.models.registry import Organisation
from service.models.residents import CONTRACT_NAME, FamilyDoctorContract, Resident
from service.models.signals import IdentityConflict, IdentityConflictParty
from service.referrals.schemas import NamedRef
from service.signals.schemas import ConflictParty, IdentityConflictOut
from service.signals.service import mark_acknowledged

SIGNAL = "identity_name_conflict"
NAME_INDEX_PURPOSE = "declared_name"


async def note_declared_identity(
    *, session: AsyncSession, actor: Actor, crypto: Crypto, resident_id: int
) -> IdentityConflict | None:
    """After a contract sync: raise, extend or close the resident's name conflict; the live one or None.

    Contracts that have not ended count. A contract is in conflict when a contract of
    another institution declares a different name; one institution's own contracts never
    conflict with each other.
    """
    # Serialises syncs for one resident, so that two of them never both raise a conflict. NO KEY
    # UPDATE leaves the KEY SHARE that a booking's foreign key to the resident takes unblocked.
    await session.execute(
        select(Resident.id).where(Resident.id == resident_id).with_for_update(key_share=True)
    )
    contracts = list(
        await session.scalars(
            select(FamilyDoctorContract)
            .where(
                FamilyDoctorContract.resident_id == resident_id,
                FamilyDoctorContract.ends_on >= local_date(actor.now),
            )
            .order_by(FamilyDoctorContract.id)
        )
    )
    names = {c.id: crypto.decrypt(c.name_enc, column=CONTRACT_NAME) for c in contracts}
    conflicting = [
        c
        for c in contracts
        if any(o.institution_id != c.institution_id and names[o.id] != names[c.id] for o in contracts)
    ]
    live = await session.scalar(
        select(IdentityConflict)
        .where(IdentityConflict.resident_id == resident_id, IdentityConflict.status != "closed")
        .with_for_update()
    )
    if not conflicting:
        if live is not None:
            live.status = "closed"
            live.closed_at = actor.now
            await session.flush()
            await _record(session, actor, "identity_conflict.closed", live, resident_id, [])
        return None
    action = "identity_conflict.updated"
    if live is None:
        live = IdentityConflict(
            signal=SIGNAL,
            resident_id=resident_id,
            first_seen_at=actor.now,
            last_seen_at=actor.now,
            status="open",
        )
        session.add(live)
        await session.flush()
        action = "identity_conflict.raised"
    parties = {
        p.contract_id: p
        for p in await session.scalars(
            select(IdentityConflictParty).where(IdentityConflictParty.conflict_id == live.id)
        )
    }
    changed: list[int] = []
    for contract in conflicting:
        name = names[contract.id]
        digest = crypto.blind_index(name, purpose=NAME_INDEX_PURPOSE)
        party = parties.get(contract.id)
        if party is not None and party.name_index == digest:
            continue
        if party is None:
            party = IdentityConflictParty(
                conflict_id=live.id, contract_id=contract.id, institution_id=contract.institution_id
            )
            session.add(party)
        party.name_masked = mask_name(name)
        party.name_index = digest
        party.declared_at = contract.updated_at
        changed.append(contract.id)
    if not changed:
        return live  # the same disagreement, seen again: nothing new to report
    live.last_seen_at = actor.now
    await session.flush()
    await _record(session, actor, action, live, resident_id, changed)
    return live


async def _record(
    session: AsyncSession,
    actor: Actor,
    action: str,
    conflict: IdentityConflict,
    resident_id: int,
    contract_ids: list[int],
) -> None:
    await record(
        session=session,
        actor=actor,
        action=action,
        code=conflict.signal,
        resident_id=resident_id,
        detail={"conflict_id": conflict.id, "contract_ids": contract_ids, "status": conflict.status},
    )


# --- the commission's view -----------------------------------------------------------------


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
