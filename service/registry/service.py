"""Setting up the region: divisions, organisations, alliances, API clients."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.kit.context import Actor, Caller
from service.kit.crypto import Crypto, new_api_key
from service.kit.errors import Conflict, Forbidden, NotFound, Unprocessable
from service.kit.regions import city_of, covers, province_of
from service.models.registry import (
    Alliance,
    AllianceMember,
    ApiClient,
    Organisation,
    Region,
    RegionNoticeSettings,
)
from service.registry.schemas import (
    AllianceIn,
    AllianceOut,
    Me,
    NoticeSettingsIn,
    NoticeSettingsOut,
    OpeningHoursIn,
    OrganisationContactPatch,
    OrganisationIn,
    OrganisationList,
    OrganisationOut,
    RegionIn,
)

ROLE_ORG_KINDS = {
    "hospital": ("hospital",),
    "primary": ("primary", "hospital"),  # a lower-tier hospital books a provincial pool (R3)
    "platform": ("authority",),
    "hotline": ("authority",),
    "commission": ("authority",),
}


def out_of_region(what: str, region_code: str) -> Forbidden:
    return Forbidden("out_of_region", f"{what} is outside your region {region_code}.")


def _check_area(area: str | None, what: str, code: str) -> None:
    """``area`` is the commission's region; None is the operator (CLI, demo), who is not scoped."""
    if area is not None and not covers(area, code):
        raise out_of_region(what, area)


def _region_view(region: Region | None) -> dict[str, Any] | None:
    if region is None:
        return None
    return {"name": region.name, "level": region.level, "parent_code": region.parent_code}


async def upsert_regions(
    *, session: AsyncSession, actor: Actor, regions: list[RegionIn], area: str | None = None
) -> int:
    """Insert or rename divisions; parents first, so a batch may hold a whole hierarchy.

    A commission (``area`` set) may only write divisions inside its own region.
    """
    for region in regions:
        _check_area(area, f"Region {region.code}", region.code)
        if region.parent_code is not None:  # nor hang one of its own under another region's
            _check_area(area, f"Parent {region.parent_code} of {region.code}", region.parent_code)
    order = {"province": 0, "city": 1, "county": 2}
    in_batch = {r.code for r in regions}
    changes: list[dict[str, Any]] = []
    for region in sorted(regions, key=lambda r: order[r.level]):
        parent = region.parent_code
        missing = parent is not None and parent not in in_batch and await session.get(Region, parent) is None
        if missing or (parent is None and region.level != "province"):
            raise Unprocessable(
                "region_parent_missing", f"Region {region.code} needs an existing parent division."
            )
        before = _region_view(await session.get(Region, region.code, populate_existing=True))
        stmt = insert(Region).values(**region.model_dump())
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=["code"], set_={"name": stmt.excluded.name, "level": stmt.excluded.level}
            )
        )
        after = {
            "name": region.name,
            "level": region.level,
            "parent_code": (before or {}).get("parent_code", region.parent_code),
        }
        if before != after:  # an unchanged division is not a change worth a line in the trail
            changes.append({"code": region.code, "before": before, "after": after})
    await session.flush()
    if changes:
        await record(session=session, actor=actor, action="region.upserted", detail={"regions": changes})
    return len(regions)


async def create_organisation(
    *, session: AsyncSession, actor: Actor, org: OrganisationIn, area: str | None = None
) -> Organisation:
    """Register an organisation; a commission (``area`` set) only inside its own region."""
    _check_area(area, f"Region {org.region_code}", org.region_code)
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
    await record(
        session=session,
        actor=actor,
        action="organisation.created",
        hospital_id=_hospital(row),
        detail={"organisation_id": row.id, "before": None, "after": fields},
    )
    return row


def _hospital(org: Organisation) -> int | None:
    """The entry's hospital column, which also places it in a region for the commission's queries."""
    return org.id if org.kind == "hospital" else None


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
        address_line=org.address_line,
        postal_code=org.postal_code,
        phone=org.phone,
    )


async def me(*, session: AsyncSession, caller: Caller) -> Me:
    """The calling client, its role and its organisation."""
    org = await session.get(Organisation, caller.org_id)
    if org is None:
        raise NotFound("organisation_not_found", "Your organisation no longer exists.")
    return Me(client_id=caller.client_id, role=caller.role, organisation=organisation_out(org))


async def list_organisations(*, session: AsyncSession, kind: str | None) -> OrganisationList:
    """Every organisation (of one ``kind`` if given), in ID order."""
    stmt = select(Organisation).order_by(Organisation.id)
    if kind:
        stmt = stmt.where(Organisation.kind == kind)
    return OrganisationList(items=[organisation_out(o) for o in await session.scalars(stmt)])


async def set_opening_hours(
    *, session: AsyncSession, actor: Actor, region_code: str, organisation_id: int, hours: OpeningHoursIn
) -> Organisation:
    """The commission records an organisation's opening hours (null: the default hours)."""
    org = await session.get(Organisation, organisation_id, with_for_update=True)
    if org is None or not covers(region_code, org.region_code):
        raise NotFound("organisation_not_found", f"No organisation {organisation_id} in your region.")
    before = org.opening_hours
    org.opening_hours = hours.model_dump(mode="json")["opening_hours"]
    await session.flush()
    await record(
        session=session,
        actor=actor,
        action="organisation.opening_hours",
        hospital_id=_hospital(org),
        detail={
            "organisation_id": org.id,
            "before": {"opening_hours": before},
            "after": {"opening_hours": org.opening_hours},
        },
    )
    return org


CONTACT_FIELDS = ("address_line", "postal_code", "phone")


async def set_contact(
    *,
    session: AsyncSession,
    actor: Actor,
    caller: Caller,
    organisation_id: int,
    patch: OrganisationContactPatch,
) -> Organisation:
    """Set an organisation's address, postal code and phone: the commission for any organisation of
    its region, a hospital for itself only; anyone else's is 404, as if it did not exist."""
    org = await session.get(Organisation, organisation_id, with_for_update=True)
    if caller.role == "commission":
        visible = org is not None and covers(caller.region_code, org.region_code)
    else:
        visible = org is not None and org.id == caller.org_id
    if org is None or not visible:
        raise NotFound("organisation_not_found", f"No organisation {organisation_id} you may change.")
    before = {name: getattr(org, name) for name in CONTACT_FIELDS}
    for name in patch.model_fields_set:
        setattr(org, name, getattr(patch, name))
    after = {name: getattr(org, name) for name in CONTACT_FIELDS}
    await session.flush()
    await record(
        session=session,
        actor=actor,
        action="organisation.contact",
        hospital_id=_hospital(org),
        detail={"organisation_id": org.id, "before": before, "after": after},
    )
    return org


def divisions(region_code: str) -> list[str]:
    """The division and the divisions above it, most specific first."""
    return list(dict.fromkeys([region_code, city_of(region_code), province_of(region_code)]))


async def notice_settings_by_region(
    session: AsyncSession, region_codes: Iterable[str]
) -> dict[str, RegionNoticeSettings | None]:
    """For each region code, the row of the most specific division above or at it that has one."""
    codes = set(region_codes)
    wanted = {division for code in codes for division in divisions(code)}
    rows = {
        row.region_code: row
        for row in await session.scalars(
            select(RegionNoticeSettings).where(RegionNoticeSettings.region_code.in_(sorted(wanted)))
        )
    }
    return {code: next((rows[d] for d in divisions(code) if d in rows), None) for code in codes}


async def notice_settings_for(*, session: AsyncSession, region_code: str) -> NoticeSettingsOut:
    """The patient-channel settings that apply in ``region_code``, and which division's row decides."""
    row = (await notice_settings_by_region(session, [region_code]))[region_code]
    if row is None:
        return NoticeSettingsOut(region_code=region_code, decided_by=None, updated_at=None)
    return NoticeSettingsOut(
        region_code=region_code,
        decided_by=row.region_code,
        updated_at=row.updated_at,
        sms_sign_name=row.sms_sign_name,
        sms_template_booked=row.sms_template_booked,
        sms_template_cancelled=row.sms_template_cancelled,
        booking_link_template=row.booking_link_template,
    )


NOTICE_FIELDS = ("sms_sign_name", "sms_template_booked", "sms_template_cancelled", "booking_link_template")


async def check_own_division(session: AsyncSession, caller: Caller, region_code: str) -> None:
    """A division the commission may configure: 403 ``region_out_of_scope`` outside its region,
    404 ``region_not_found`` for a code the registry does not know."""
    if not covers(caller.region_code, region_code):
        raise Forbidden("region_out_of_scope", f"Region {region_code} is outside your region.")
    if await session.get(Region, region_code) is None:
        raise NotFound("region_not_found", f"No region {region_code}.")


async def set_notice_settings(
    *, session: AsyncSession, actor: Actor, caller: Caller, region_code: str, settings: NoticeSettingsIn
) -> NoticeSettingsOut:
    """The commission sets the patient channels of a division of its region (the whole row at once)."""
    await check_own_division(session, caller, region_code)
    row = await session.get(RegionNoticeSettings, region_code, with_for_update=True)
    before = {name: getattr(row, name) for name in NOTICE_FIELDS} if row is not None else None
    if row is None:
        row = RegionNoticeSettings(region_code=region_code)
        session.add(row)
    for name in NOTICE_FIELDS:
        setattr(row, name, getattr(settings, name))
    row.updated_at = actor.now
    row.updated_by_client_id = actor.client_id
    await session.flush()
    await record(
        session=session,
        actor=actor,
        action="notice_settings.set",
        detail={
            "region_code": region_code,
            "before": before,
            "after": {name: getattr(row, name) for name in NOTICE_FIELDS},
        },
    )
    return await notice_settings_for(session=session, region_code=region_code)


def booking_link(
    template: str, *, slot_id: int, schedule_id: int, location_id: int, hospital_code: str
) -> str:
    """A slot's booking deep link from its region's template; every value is percent-encoded."""
    values = {
        "slot_id": slot_id,
        "schedule_id": schedule_id,
        "location_id": location_id,
        "hospital_code": hospital_code,
    }
    return template.format(**{name: quote(str(value), safe="") for name, value in values.items()})


async def org_by_code(session: AsyncSession, code: str) -> Organisation:
    org = await session.scalar(select(Organisation).where(Organisation.code == code))
    if org is None:
        raise NotFound("organisation_not_found", f"No organisation with code {code}.")
    return org


async def create_alliance(
    *, session: AsyncSession, actor: Actor, alliance: AllianceIn, area: str | None = None
) -> Alliance:
    """Register an alliance; for a commission (``area`` set) the lead and every member lie in its region.

    An alliance opens the lead's pool to its members (scope ``alliance``), so a member from
    outside the region would book a pool its own commission does not supervise.
    """
    lead = await org_by_code(session, alliance.lead_hospital_code)
    _check_area(area, f"Organisation {lead.code}", lead.region_code)
    if lead.kind != "hospital":
        raise Unprocessable("lead_not_hospital", "An alliance is led by a hospital.")
    members = [await org_by_code(session, code) for code in dict.fromkeys(alliance.member_codes)]
    for member in members:  # listed twice is still one member
        _check_area(area, f"Organisation {member.code}", member.region_code)
    row = Alliance(name=alliance.name, lead_hospital_id=lead.id)
    session.add(row)
    await session.flush()
    for member in members:
        session.add(AllianceMember(alliance_id=row.id, organisation_id=member.id))
    await session.flush()
    await record(
        session=session,
        actor=actor,
        action="alliance.created",
        hospital_id=lead.id,
        detail={
            "alliance_id": row.id,
            "before": None,
            "after": {
                "name": row.name,
                "lead_hospital_id": lead.id,
                "member_ids": sorted(m.id for m in members),
            },
        },
    )
    return row


async def alliance_out(*, session: AsyncSession, alliance: Alliance) -> AllianceOut:
    members = await session.scalars(
        select(AllianceMember.organisation_id).where(AllianceMember.alliance_id == alliance.id)
    )
    return AllianceOut(
        id=alliance.id,
        name=alliance.name,
        lead_hospital_id=alliance.lead_hospital_id,
        member_ids=sorted(members),
    )


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
    # Never the key, nor its prefix: the trail is read by people who must not hold it.
    await record(
        session=session,
        actor=actor,
        action="api_client.issued",
        hospital_id=_hospital(org),
        detail={
            "client_id": client.id,
            "before": None,
            "after": {"organisation_id": org.id, "role": role, "name": name},
        },
    )
    return client, token
