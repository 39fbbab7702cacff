"""Setting up the region: divisions, organisations, alliances, API clients."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.context import Actor
from service.crypto import Crypto, new_api_key
from service.errors import Conflict, NotFound, Unprocessable
from service.regions import covers
from service.registry.models import Alliance, AllianceMember, ApiClient, Organisation, Region
from service.registry.schemas import AllianceIn, OpeningHoursIn, OrganisationIn, OrganisationOut, RegionIn

ROLE_ORG_KINDS = {
    "hospital": ("hospital",),
    "primary": ("primary", "hospital"),  # a lower-tier hospital books a provincial pool (R3)
    "platform": ("authority",),
    "hotline": ("authority",),
    "commission": ("authority",),
}


async def upsert_regions(*, session: AsyncSession, regions: list[RegionIn]) -> int:
    """Insert or rename divisions; parents first, so a batch may hold a whole hierarchy."""
    order = {"province": 0, "city": 1, "county": 2}
    in_batch = {r.code for r in regions}
    for region in sorted(regions, key=lambda r: order[r.level]):
        parent = region.parent_code
        missing = parent is not None and parent not in in_batch and await session.get(Region, parent) is None
        if missing or (parent is None and region.level != "province"):
            raise Unprocessable(
                "region_parent_missing", f"Region {region.code} needs an existing parent division."
            )
        stmt = insert(Region).values(**region.model_dump())
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=["code"], set_={"name": stmt.excluded.name, "level": stmt.excluded.level}
            )
        )
    await session.flush()
    return len(regions)


async def create_organisation(*, session: AsyncSession, org: OrganisationIn) -> Organisation:
    if await session.get(Region, org.region_code) is None:
        raise Unprocessable("region_not_found", f"No region {org.region_code}.")
    if org.kind == "hospital" and (org.hospital_level is None or org.hospital_tier is None):
        raise Unprocessable("hospital_fields", "A hospital needs hospital_level and hospital_tier.")
    if org.kind == "primary" and org.primary_kind is None:
        raise Unprocessable("primary_fields", "A primary institution needs primary_kind.")
    if await session.scalar(select(Organisation.id).where(Organisation.code == org.code)):
        raise Conflict("organisation_exists", f"An organisation with code {org.code} exists.")
    fields = org.model_dump(mode="json")
    if org.kind != "hospital":
        fields.update(hospital_level=None, hospital_tier=None)
    if org.kind != "primary":
        fields["primary_kind"] = None
    row = Organisation(**fields)
    session.add(row)
    await session.flush()
    return row


def organisation_out(org: Organisation) -> OrganisationOut:
    return OrganisationOut(
        id=org.id,
        code=org.code,
        name=org.name,
        kind=org.kind,
        region_code=org.region_code,
        hospital_level=org.hospital_level,
        hospital_tier=org.hospital_tier,
        primary_kind=org.primary_kind,
        reservation_mode=org.reservation_mode,
        opening_hours=org.opening_hours,
    )


async def set_opening_hours(
    *, session: AsyncSession, actor: Actor, region_code: str, organisation_id: int, hours: OpeningHoursIn
) -> Organisation:
    """The commission records an organisation's opening hours (null: the default hours)."""
    org = await session.get(Organisation, organisation_id, with_for_update=True)
    if org is None or not covers(region_code, org.region_code):
        raise NotFound("organisation_not_found", f"No organisation {organisation_id} in your region.")
    org.opening_hours = hours.model_dump(mode="json")["opening_hours"]
    await session.flush()
    await record(
        session=session,
        actor=actor,
        action="organisation.opening_hours",
        detail={"organisation_id": org.id, "opening_hours": org.opening_hours},
    )
    return org


async def org_by_code(session: AsyncSession, code: str) -> Organisation:
    org = await session.scalar(select(Organisation).where(Organisation.code == code))
    if org is None:
        raise NotFound("organisation_not_found", f"No organisation with code {code}.")
    return org


async def create_alliance(*, session: AsyncSession, alliance: AllianceIn) -> Alliance:
    lead = await org_by_code(session, alliance.lead_hospital_code)
    if lead.kind != "hospital":
        raise Unprocessable("lead_not_hospital", "An alliance is led by a hospital.")
    row = Alliance(name=alliance.name, lead_hospital_id=lead.id)
    session.add(row)
    await session.flush()
    for code in dict.fromkeys(alliance.member_codes):  # listed twice is still one member
        member = await org_by_code(session, code)
        session.add(AllianceMember(alliance_id=row.id, organisation_id=member.id))
    await session.flush()
    return row


async def create_api_client(
    *, session: AsyncSession, actor: Actor, crypto: Crypto, organisation_id: int, role: str, name: str
) -> tuple[ApiClient, str]:
    """Issue a key; the plaintext is returned once and only its HMAC digest is stored."""
    org = await session.get(Organisation, organisation_id)
    if org is None:
        raise NotFound("organisation_not_found", f"No organisation {organisation_id}.")
    if org.kind not in ROLE_ORG_KINDS.get(role, ()):
        raise Unprocessable("role_not_allowed", f"A {org.kind} organisation cannot hold a {role} client.")
    token = new_api_key()
    client = ApiClient(
        organisation_id=org.id,
        role=role,
        name=name,
        key_prefix=token[:10],
        key_digest=crypto.api_key_digest(token),
        created_at=actor.now,
    )
    session.add(client)
    await session.flush()
    return client, token
