"""The commission sets up the region; every caller can ask who it is."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from service.kit.ids import PathId
from service.registry import service
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
    RegionBatch,
)
from service.web.contract import operation
from service.web.unit import Unit, UnitRoute, reads, writes

router = APIRouter(prefix="/v1", tags=["registry"], route_class=UnitRoute)
Commission = Annotated[Unit, writes("commission")]


@router.get("/me", response_model=Me, **operation("getMe", "Who am I", problems=["organisation_not_found"]))
async def me(unit: Annotated[Unit, reads()]) -> Me:
    """The calling client, its role and its organisation."""
    return await service.me(session=unit.session, caller=unit.caller)


@router.post(
    "/regions",
    status_code=204,
    **operation(
        "upsertRegions", "Add or rename divisions", problems=["out_of_region", "region_parent_missing"]
    ),
)
async def upsert_regions(body: RegionBatch, unit: Commission) -> None:
    """Insert or rename GB/T 2260 divisions inside the commission's region."""
    await service.upsert_regions(
        session=unit.session, actor=unit.actor, regions=body.regions, area=unit.caller.region_code
    )


@router.post(
    "/organisations",
    response_model=OrganisationOut,
    status_code=201,
    **operation(
        "createOrganisation",
        "Register an organisation",
        problems=[
            "out_of_region",
            "region_not_found",
            "hospital_fields",
            "primary_fields",
            "organisation_exists",
        ],
    ),
)
async def create_organisation(body: OrganisationIn, unit: Commission) -> OrganisationOut:
    """Register a hospital, a primary institution or an authority of the commission's region."""
    org = await service.create_organisation(
        session=unit.session, actor=unit.actor, org=body, area=unit.caller.region_code
    )
    return service.organisation_out(org)


@router.put(
    "/organisations/{organisation_id}/opening-hours",
    response_model=OrganisationOut,
    **operation(
        "setOpeningHours", "Record an institution's opening hours", problems=["organisation_not_found"]
    ),
)
async def set_opening_hours(
    organisation_id: PathId, body: OpeningHoursIn, unit: Commission
) -> OrganisationOut:
    """The commission records an institution's opening hours (R14: off-hours consultations)."""
    org = await service.set_opening_hours(
        session=unit.session,
        actor=unit.actor,
        region_code=unit.caller.region_code,
        organisation_id=organisation_id,
        hours=body,
    )
    return service.organisation_out(org)


@router.patch(
    "/organisations/{organisation_id}",
    response_model=OrganisationOut,
    **operation(
        "updateOrganisationContact",
        "Set an organisation's address and phone",
        problems=["organisation_not_found"],
    ),
)
async def patch_organisation_contact(
    organisation_id: PathId,
    body: OrganisationContactPatch,
    unit: Annotated[Unit, writes("commission", "hospital")],
) -> OrganisationOut:
    """Set the address, postal code and phone patients see on the slip and FHIR clients on the Location.

    The commission sets them for the organisations of its region, a hospital for itself; a field left
    out stays as it is, null clears it. Audited as ``organisation.contact``.
    """
    org = await service.set_contact(
        session=unit.session,
        actor=unit.actor,
        caller=unit.caller,
        organisation_id=organisation_id,
        patch=body,
    )
    return service.organisation_out(org)


RegionCode = Annotated[str, Path(pattern="^[0-9]{6}$", description="A GB/T 2260 division code.")]


@router.get(
    "/regions/{region_code}/notice-settings",
    response_model=NoticeSettingsOut,
    **operation("getNoticeSettings", "Read a division's SMS templates and booking deep link"),
)
async def get_notice_settings(
    region_code: RegionCode, unit: Annotated[Unit, reads("commission", "platform", "primary", "hospital")]
) -> NoticeSettingsOut:
    """The SMS signature and template codes and the booking deep-link template that apply in a division."""
    return await service.notice_settings_for(session=unit.session, region_code=region_code)


@router.put(
    "/regions/{region_code}/notice-settings",
    response_model=NoticeSettingsOut,
    **operation(
        "putNoticeSettings",
        "Set a division's SMS templates and booking deep link",
        problems=["region_out_of_scope", (404, "region_not_found")],
    ),
)
async def set_notice_settings(
    region_code: RegionCode, body: NoticeSettingsIn, unit: Commission
) -> NoticeSettingsOut:
    """The commission sets a division's patient channels; its row applies to the divisions below it that
    have none of their own. The whole row is replaced; audited as ``notice_settings.set``."""
    return await service.set_notice_settings(
        session=unit.session, actor=unit.actor, caller=unit.caller, region_code=region_code, settings=body
    )


@router.get(
    "/organisations", response_model=OrganisationList, **operation("listOrganisations", "List organisations")
)
async def list_organisations(
    unit: Annotated[Unit, reads()],
    kind: Annotated[str | None, Query(pattern="^(hospital|primary|authority)$")] = None,
) -> OrganisationList:
    """Organisations (public registry data, no personal data)."""
    return await service.list_organisations(session=unit.session, kind=kind)


@router.post(
    "/alliances",
    response_model=AllianceOut,
    status_code=201,
    **operation(
        "createAlliance",
        "Register a medical alliance",
        problems=["organisation_not_found", "out_of_region", "lead_not_hospital"],
    ),
)
async def create_alliance(body: AllianceIn, unit: Commission) -> AllianceOut:
    """Register a medical alliance: a lead hospital and its members, all in the commission's region."""
    alliance = await service.create_alliance(
        session=unit.session, actor=unit.actor, alliance=body, area=unit.caller.region_code
    )
    return await service.alliance_out(session=unit.session, alliance=alliance)
