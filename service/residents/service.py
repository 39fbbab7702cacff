"""Syncing signed residents and their contracts (R8). Each row applies whole or not at all."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.clock import local_date
from service.context import Actor, Caller
from service.crypto import Crypto, mask_id_number
from service.regions import covers
from service.registry.models import Doctor, Organisation
from service.residents.idnumber import InvalidIdNumber, normalise_id_number
from service.residents.models import FamilyDoctorContract, Resident
from service.residents.schemas import ContractIn, ContractResult, ContractSyncResult, RowError


class RowRejected(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.error = RowError(code=code, detail=detail)


async def sync_contracts(
    *, session: AsyncSession, actor: Actor, caller: Caller, crypto: Crypto, rows: list[ContractIn]
) -> ContractSyncResult:
    """Upsert residents, family doctors and contracts; report every invalid row on its own."""
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
    values = {
        "id_index": index,
        "id_number_enc": crypto.encrypt(id_number, column="residents.id_number"),
        "name_enc": crypto.encrypt(row.resident.name.strip(), column="residents.name"),
        "phone_enc": crypto.encrypt(row.resident.phone, column="residents.phone")
        if row.resident.phone
        else None,
        "created_at": actor.now,
        "updated_at": actor.now,
    }
    stmt = insert(Resident).values(**values)
    resident_id = await session.scalar(
        stmt.on_conflict_do_update(
            index_elements=["id_index"],
            set_={
                "name_enc": stmt.excluded.name_enc,
                "phone_enc": stmt.excluded.phone_enc,
                "updated_at": stmt.excluded.updated_at,
            },
        ).returning(Resident.id)
    )
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
    if existing is None:
        existing = FamilyDoctorContract(institution_id=institution.id, contract_no=row.contract_no)
        session.add(existing)
    elif existing.resident_id != resident_id:
        raise RowRejected("contract_resident_changed", "A contract number belongs to one resident.")
    assert resident_id is not None and doctor_id is not None
    existing.resident_id = resident_id
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
        detail={"contract_no": row.contract_no, "institution_id": institution.id, "created": created},
    )
    return created, mask_id_number(id_number)
