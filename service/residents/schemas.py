"""Family-doctor contracts, as the signing platform syncs them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from service.abuse.bounds import max_items
from service.kit.bounds import Day
from service.kit.schemas import ApiModel
from service.models.registry import Title


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


MAX_SYNC_CONTRACTS = 5000


class ContractSync(ApiModel):
    contracts: list[ContractIn] = Field(
        min_length=1,
        json_schema_extra=max_items(MAX_SYNC_CONTRACTS),
        description=f"At most {MAX_SYNC_CONTRACTS} per request (422 `too_many_items` beyond); sync "
        "more in several requests: each row is an upsert of its own.",
    )


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


ContractSource = Literal["any", "platform"]


class ContractSourceIn(ApiModel):
    source: ContractSource = Field(
        description="platform: only the region's signing platform may sync contracts; "
        "any: each primary institution may also sync its own."
    )


class ContractSourceOut(ApiModel):
    region_code: str
    source: ContractSource
    decided_by: str | None = Field(
        None, description="The division whose setting applies (this one or one above); null: the default."
    )
    updated_at: datetime | None = None
