"""Syncing signed residents and their contracts (R8). Each row applies whole or not at all.

Each contract keeps the name and phone its institution declared; the resident row
only finds the person by ID number and is never rewritten by a sync (docs/identity.md).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.kit.clock import local_date
from service.kit.context import Actor, Caller
from service.kit.crypto import Crypto, mask_id_number
from service.kit.errors import Forbidden
from service.kit.regions import city_of, covers, province_of
from service.models.registry import Doctor, Organisation
from service.models.residents import (
    CONTRACT_NAME,
    CONTRACT_PHONE,
    FamilyDoctorContract,
    RegionContractSource,
    Resident,
)
from service.registry.service import check_own_division
from service.residents.conflicts import note_declared_identity
from service.residents.idnumber import InvalidIdNumber, normalise_id_number
from service.residents.schemas import (
    ContractIn,
    ContractResult,
    ContractSourceOut,
    ContractSyncResult,
    RowError,
)


class RowRejected(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.error = RowError(code=code, detail=detail)


async def sync_contracts(
    *, session: AsyncSession, actor: Actor, caller: Caller, crypto: Crypto, rows: list[ContractIn]
) -> ContractSyncResult:
    """Upsert residents, family doctors and contracts; report every invalid row on its own."""
    if caller.role == "primary":
        source = await contract_source_for(session=session, region_code=caller.region_code)
        if source.source == "platform":
            raise Forbidden(
                "contracts_platform_only",
                "This region accepts family-doctor contracts from its signing platform only.",
                region_code=source.decided_by,
            )
    results: list[ContractResult] = []
    for index, row in enumerate(rows):
        try:
            async with session.begin_nested():
                created, masked = await _apply_contract(session, actor, caller, crypto, row)
            results.append(
                ContractResult(
                    index=index,
                    contract_no=row.contract_no,
                    result="created" if created else "updated",
                    resident_id_masked=masked,
                )
            )
        except RowRejected as exc:
            results.append(
                ContractResult(
                    index=index, contract_no=row.contract_no, result="rejected", errors=[exc.error]
                )
            )
    return ContractSyncResult(
        created=sum(r.result == "created" for r in results),
        updated=sum(r.result == "updated" for r in results),
        rejected=sum(r.result == "rejected" for r in results),
        results=results,
    )


async def _apply_contract(
    session: AsyncSession, actor: Actor, caller: Caller, crypto: Crypto, row: ContractIn
) -> tuple[bool, str]:
    try:
        id_number = normalise_id_number(row.resident.id_number, today=local_date(actor.now))
    except InvalidIdNumber as exc:
        raise RowRejected("invalid_id_number", f"{exc} ({exc.reason})") from None
    if row.ends_on < row.starts_on:
        raise RowRejected("invalid_dates", "ends_on is before starts_on.")
    institution = await session.scalar(select(Organisation).where(Organisation.code == row.institution_code))
    if institution is None or institution.kind != "primary":
        raise RowRejected("institution_not_found", f"No primary institution {row.institution_code}.")
    allowed = (
        institution.id == caller.org_id
        if caller.role == "primary"
        else covers(caller.region_code, institution.region_code)
    )
    if not allowed:
        raise RowRejected("institution_out_of_scope", "You may not sync contracts for this institution.")

    index = crypto.blind_index(id_number, purpose="resident_id")
    name = row.resident.name.strip()
    phone = row.resident.phone.strip() if row.resident.phone and row.resident.phone.strip() else None
    # The first declaration registers the person; later ones live on their own contracts only.
    await session.execute(
        insert(Resident)
        .values(
            id_index=index,
            id_number_enc=crypto.encrypt(id_number, column="residents.id_number"),
            name_enc=crypto.encrypt(name, column="residents.name"),
            phone_enc=crypto.encrypt(phone, column="residents.phone") if phone else None,
            created_at=actor.now,
            updated_at=actor.now,
        )
        .on_conflict_do_nothing(index_elements=["id_index"])
    )
    resident_id = await session.scalar(select(Resident.id).where(Resident.id_index == index))
    doc = row.family_doctor
    dstmt = insert(Doctor).values(
        organisation_id=institution.id, code=doc.code, name=doc.name, title=doc.title
    )
    doctor_id = await session.scalar(
        dstmt.on_conflict_do_update(
            index_elements=["organisation_id", "code"], set_={"name": doc.name, "title": doc.title}
        ).returning(Doctor.id)
    )
    existing = await session.scalar(
        select(FamilyDoctorContract).where(
            FamilyDoctorContract.institution_id == institution.id,
            FamilyDoctorContract.contract_no == row.contract_no,
        )
    )
    created = existing is None
    name_changed = False
    if existing is None:
        existing = FamilyDoctorContract(institution_id=institution.id, contract_no=row.contract_no)
        session.add(existing)
    elif existing.resident_id != resident_id:
        raise RowRejected("contract_resident_changed", "A contract number belongs to one resident.")
    else:
        name_changed = crypto.decrypt(existing.name_enc, column=CONTRACT_NAME) != name
    assert resident_id is not None and doctor_id is not None
    existing.resident_id = resident_id
    existing.name_enc = crypto.encrypt(name, column=CONTRACT_NAME)
    existing.phone_enc = crypto.encrypt(phone, column=CONTRACT_PHONE) if phone else None
    existing.family_doctor_id = doctor_id
    existing.starts_on = row.starts_on
    existing.ends_on = row.ends_on
    existing.updated_at = actor.now
    await session.flush()
    await record(
        session=session,
        actor=actor,
        action="contract.synced",
        resident_id=resident_id,
        detail={
            "contract_no": row.contract_no,
            "institution_id": institution.id,
            "created": created,
            "declared_name_changed": name_changed,
        },
    )
    await note_declared_identity(session=session, actor=actor, crypto=crypto, resident_id=resident_id)
    return created, mask_id_number(id_number)


# --- where contracts may come from --------------------------------------------------------------


def _divisions(region_code: str) -> list[str]:
    """The division and the divisions above it, most specific first."""
    return list(dict.fromkeys([region_code, city_of(region_code), province_of(region_code)]))


async def contract_source_for(*, session: AsyncSession, region_code: str) -> ContractSourceOut:
    """Who may sync contracts for institutions of ``region_code``: the most specific setting decides."""
    divisions = _divisions(region_code)
    rows = {
        r.region_code: r
        for r in await session.scalars(
            select(RegionContractSource).where(RegionContractSource.region_code.in_(divisions))
        )
    }
    for code in divisions:
        if code in rows:
            return ContractSourceOut(
                region_code=region_code,
                source=rows[code].source,
                decided_by=code,
                updated_at=rows[code].updated_at,
            )
    return ContractSourceOut(region_code=region_code, source="any", decided_by=None, updated_at=None)


async def set_contract_source(
    *, session: AsyncSession, actor: Actor, caller: Caller, region_code: str, source: str
) -> ContractSourceOut:
    """The commission decides whether its region (or a division in it) takes contracts from the platform only."""
    await check_own_division(session, caller, region_code)
    row = await session.get(RegionContractSource, region_code, with_for_update=True)
    before = row.source if row is not None else None
    if row is None:
        row = RegionContractSource(region_code=region_code)
        session.add(row)
    row.source = source
    row.updated_at = actor.now
    row.updated_by_client_id = actor.client_id
    await session.flush()
    await record(
        session=session,
        actor=actor,
        action="contract_source.set",
        detail={"region_code": region_code, "before": before, "after": source},
    )
    return await contract_source_for(session=session, region_code=region_code)
