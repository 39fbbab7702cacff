"""Regions, organisations and alliances, as the commission sets them up."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, WithJsonSchema

from service.kit.schemas import ApiModel


class RegionIn(ApiModel):
    code: str = Field(pattern=r"^[0-9]{6}$", description="GB/T 2260 code.")
    name: str = Field(min_length=1, max_length=100)
    level: Literal["province", "city", "county"]
    parent_code: str | None = Field(default=None, pattern=r"^[0-9]{6}$")


class RegionBatch(ApiModel):
    regions: list[RegionIn] = Field(min_length=1, max_length=5000)


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ClockTime = Annotated[str, Field(pattern=r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")]


def _intervals_ordered(intervals: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # Zero-padded HH:MM strings order as the times they name.
    for start, end in intervals:
        if start >= end:
            raise ValueError(f"an opening interval must end after it starts: {start}-{end}")
    return intervals


# An interval is a pair of clock times. Published as a two-item array of times rather than
# JSON Schema's prefixItems: both items share one schema, and client generators and schemathesis
# read the plain form (docs/contract.md).
Interval = Annotated[
    tuple[ClockTime, ClockTime],
    WithJsonSchema(
        {
            "type": "array",
            "items": {"type": "string", "pattern": r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"},
            "minItems": 2,
            "maxItems": 2,
        }
    ),
]
OpeningHours = dict[
    Weekday,
    Annotated[list[Interval], Field(max_length=6), AfterValidator(_intervals_ordered)],
]
# When an institution has not said: every day 07:30-18:00, Beijing time (docs/signals.md).
DEFAULT_OPENING_HOURS: dict[str, list[tuple[str, str]]] = {day: [("07:30", "18:00")] for day in WEEKDAYS}


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
    opening_hours: OpeningHours | None = Field(
        default=None,
        description='Opening hours per weekday in Beijing time, e.g. {"mon": [["07:30", "12:00"], '
        '["13:30", "18:00"]]}; a weekday left out is closed. Null: every day 07:30-18:00. '
        "Consultations outside them feed the consultation_off_hours signal (R14).",
    )


class OpeningHoursIn(ApiModel):
    opening_hours: OpeningHours | None = Field(
        description="Null returns the institution to the default hours."
    )


class OrganisationOut(OrganisationIn):
    id: int


class OrganisationList(ApiModel):
    items: list[OrganisationOut]


class AllianceIn(ApiModel):
    name: str = Field(min_length=1, max_length=200)
    lead_hospital_code: str = Field(min_length=1, max_length=64)
    member_codes: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        min_length=1, max_length=1000
    )


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
