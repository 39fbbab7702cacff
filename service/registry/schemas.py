"""Regions, organisations and alliances, as the commission sets them up."""

from __future__ import annotations

import re
from datetime import datetime
from string import Formatter
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, WithJsonSchema, model_validator

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


# Where patients go and whom they call: printed on the slip, served on FHIR's Location (docs/slip.md).
AddressLine = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        pattern=r"^[^\r\n]+$",
        description="Street address below the district, one line, e.g. 安徽省合肥市蜀山区淮河路390号.",
    ),
]
PostalCode = Annotated[str, Field(pattern=r"^[0-9]{6}$", description="邮政编码, six digits.")]
Phone = Annotated[
    str,
    Field(
        pattern=r"^\+?[0-9][0-9 ()-]{2,38}$",
        description="The number patients call (a front desk, not a person), e.g. 0551-62283114.",
    ),
]


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
    address_line: AddressLine | None = None
    postal_code: PostalCode | None = None
    phone: Phone | None = None


class OrganisationContactPatch(ApiModel):
    """A merge patch of an organisation's contact data: a field left out stays, null clears it."""

    address_line: AddressLine | None = None
    postal_code: PostalCode | None = None
    phone: Phone | None = None

    @model_validator(mode="after")
    def _says_something(self) -> OrganisationContactPatch:
        if not self.model_fields_set:
            raise ValueError("send at least one of address_line, postal_code, phone")
        return self


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


# The placeholders a booking deep-link template may use; ``{slot_id}`` is required (docs/fhir.md).
LINK_PLACEHOLDERS = ("slot_id", "schedule_id", "location_id", "hospital_code")
SmsTemplateCode = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9_-]{1,40}$",
        description="A template code registered with the region's SMS gateway (Aliyun SMS_…, Tencent Cloud's "
        "numeric template ID).",
    ),
]


class NoticeSettingsIn(ApiModel):
    """A division's patient channels: its SMS signature and templates, its booking deep links."""

    sms_sign_name: str | None = Field(
        default=None,
        pattern=r"^[^【】\[\]\r\n]{2,20}$",
        description="The registered signature (签名), without 【】; the gateway adds the brackets.",
    )
    sms_template_booked: SmsTemplateCode | None = Field(
        default=None, description="Template of the booking notice; parameters in docs/slip.md."
    )
    sms_template_cancelled: SmsTemplateCode | None = Field(
        default=None, description="Template of the cancellation notice; parameters in docs/slip.md."
    )
    booking_link_template: str | None = Field(
        default=None,
        max_length=500,
        description="https URL of the region's booking page for one slot, with {slot_id} and optionally "
        "{schedule_id}, {location_id}, {hospital_code}; FHIR Slots that are free carry it as the SMART "
        "booking-deep-link extension.",
    )

    @model_validator(mode="after")
    def _usable(self) -> NoticeSettingsIn:
        if (self.sms_template_booked or self.sms_template_cancelled) and not self.sms_sign_name:
            raise ValueError("an SMS template needs the sms_sign_name it was registered with")
        if self.booking_link_template is not None:
            check_link_template(self.booking_link_template)
        return self


def check_link_template(template: str) -> None:
    """Refuse a template that is not https, lacks {slot_id}, or names an unknown placeholder."""
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in Formatter().parse(template)]
    except ValueError as exc:
        raise ValueError(f"booking_link_template: {exc}") from exc
    # A format spec or a conversion ({slot_id:>999999999}, {slot_id!r}) would pad or quote the
    # value, or exhaust memory when formatted: placeholders are bare names.
    if any(spec or conversion for name, spec, conversion in fields if name is not None):
        raise ValueError("booking_link_template: placeholders take no format spec or conversion")
    names = {name for name, _, _ in fields if name is not None}
    unknown = names - set(LINK_PLACEHOLDERS)
    if unknown:
        raise ValueError(f"booking_link_template: unknown placeholder(s) {sorted(unknown)}")
    if "slot_id" not in names:
        raise ValueError("booking_link_template must contain {slot_id}")
    sample = urlsplit(template.format(**dict.fromkeys(LINK_PLACEHOLDERS, "1")))
    try:
        sample.port  # noqa: B018 -- raises for a port out of range
    except ValueError:
        sample = sample._replace(netloc="")
    if sample.scheme != "https" or not sample.hostname or re.search(r"\s", template):
        raise ValueError("booking_link_template must be an https URL with a host and no spaces")


class NoticeSettingsOut(NoticeSettingsIn):
    region_code: str
    decided_by: str | None = Field(
        description="The division whose row applies (this one or one above it); null: none is set."
    )
    updated_at: datetime | None
