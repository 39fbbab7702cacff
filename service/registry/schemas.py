"""Regions, organisations and alliances, as the commission sets them up."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from service.schemas import ApiModel


class RegionIn(ApiModel):
    code: str = Field(pattern=r"^[0-9]{6}$", description="GB/T 2260 code.")
    name: str = Field(min_length=1, max_length=100)
    level: Literal["province", "city", "county"]
    parent_code: str | None = Field(default=None, pattern=r"^[0-9]{6}$")


class RegionBatch(ApiModel):
    regions: list[RegionIn] = Field(min_length=1, max_length=5000)


class OrganisationIn(ApiModel):
    code: str = Field(
        min_length=1, max_length=64, description="The organisation's own code (e.g. 统一社会信用代码)."
    )
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["hospital", "primary", "authority"]
    region_code: str = Field(pattern=r"^[0-9]{6}$")
    hospital_level: Literal[2, 3] | None = None
    hospital_tier: Literal["provincial", "city", "county"] | None = None
    primary_kind: Literal["community", "township", "village"] | None = None
    reservation_mode: Literal["pool", "hospital"] = "pool"


class OrganisationOut(OrganisationIn):
    id: int


class OrganisationList(ApiModel):
    items: list[OrganisationOut]


class AllianceIn(ApiModel):
    name: str = Field(min_length=1, max_length=200)
    lead_hospital_code: str
    member_codes: list[str] = Field(min_length=1, max_length=1000)


class AllianceOut(ApiModel):
    id: int
    name: str
    lead_hospital_id: int
    member_ids: list[int]


class PolicyAssignment(ApiModel):
    policy_code: str = Field(min_length=1, max_length=64)


class Me(ApiModel):
    client_id: int
    role: str
    organisation: OrganisationOut
