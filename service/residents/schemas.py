"""Family-doctor contracts, as the signing platform syncs them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from service.bounds import Day
from service.schemas import ApiModel
from service.slots.schemas import Title


class FamilyDoctorIn(ApiModel):
    code: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=100)
    title: Title = "attending"


class ResidentIn(ApiModel):
    id_number: str = Field(min_length=1, max_length=32)
    name: str = Field(min_length=1, max_length=100)
    phone: str | None = Field(default=None, max_length=20)


class ContractIn(ApiModel):
    contract_no: str = Field(min_length=1, max_length=64)
    institution_code: str = Field(min_length=1, max_length=64)
    family_doctor: FamilyDoctorIn
    resident: ResidentIn
    starts_on: Day
    ends_on: Day


class ContractSync(ApiModel):
    contracts: list[ContractIn] = Field(min_length=1, max_length=5000)


class RowError(ApiModel):
    code: str
    detail: str


class ContractResult(ApiModel):
    index: int
    contract_no: str
    result: Literal["created", "updated", "rejected"]
    resident_id_masked: str | None = None
    errors: list[RowError] = Field(default_factory=list)


class ContractSyncResult(ApiModel):
    created: int
    updated: int
    rejected: int
    results: list[ContractResult]
