"""Identity name conflicts as residents' data: recorded when a contract sync makes declarations disagree.

A contract sync never rewrites another institution's declaration (docs/identity.md).
When the declarations disagree, the commission gets one ``identity_name_conflict``
signal per resident while the disagreement lasts; its evidence names institutions,
contract numbers and masked names, never an ID number or a whole name. The commission
reads and acknowledges conflicts through ``service.signals.identity``.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.kit.clock import local_date
from service.kit.context import Actor
from service.kit.crypto import Crypto, mask_name
from service.models.residents import CONTRACT_NAME, FamilyDoctorContract, Resident
from service.models.signals import IdentityConflict, IdentityConflictParty

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
