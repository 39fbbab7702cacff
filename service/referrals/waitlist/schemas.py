"""Waiting-list entries and offers as the family doctor's app sends and sees them."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import Field, model_validator

from service.kit.bounds import Day
from service.kit.ids import DbId
from service.kit.resources import Modality, ResourceKind
from service.kit.schemas import ApiModel
from service.referrals.schemas import Consultation, Icd10, NamedRef, ResidentRef, SlotOut

# An entry waits at most this many days: long enough for a department's next sessions, short
# enough that the line reflects demand now rather than last season's (docs/waitlist.md).
MAX_RANGE_DAYS = 60


class EntryIn(ApiModel):
    hospital_id: DbId
    department_id: DbId
    resource_kind: ResourceKind = "outpatient"
    modality: Modality | None = Field(None, description="Examinations: only this modality's blocks.")
    ward_code: str | None = Field(None, min_length=1, max_length=64, description="Beds: only this ward.")
    from_date: Day = Field(description="First service date the resident can take (Beijing date).")
    to_date: Day = Field(description="Last service date; the entry expires after it.")
    referring_doctor_code: str = Field(
        min_length=1,
        max_length=64,
        description="Code of the caller's own doctor who referred (the family doctor).",
    )
    resident: ResidentRef
    consultation: Consultation
    diagnoses: list[Icd10] = Field(min_length=1, max_length=10, description="ICD-10 codes (R10).")
    urgent: bool = Field(
        False, description="The family doctor marks the referral urgent; only where the policy allows it."
    )
    urgent_reason: str | None = Field(None, min_length=1, max_length=500, description="Required with urgent.")

    @model_validator(mode="after")
    def _reason_with_urgent(self) -> EntryIn:
        if self.urgent != (self.urgent_reason is not None):
            raise ValueError("urgent_reason is given exactly when urgent is true")
        if self.to_date < self.from_date:
            raise ValueError("to_date is before from_date")
        if (self.to_date - self.from_date).days >= MAX_RANGE_DAYS:
            raise ValueError(f"a waiting-list entry spans at most {MAX_RANGE_DAYS} days")
        return self


class WithdrawIn(ApiModel):
    reason: str = Field(min_length=1, max_length=500)


class EntryOut(ApiModel):
    reference: str
    status: str = Field(description="waiting, booked, withdrawn or expired.")
    hospital: NamedRef
    department: NamedRef
    resource_kind: str
    modality: str | None
    ward_code: str | None
    from_date: date
    to_date: date
    resident_name_masked: str
    resident_id_masked: str
    referring_doctor_code: str
    urgent: bool
    urgent_reason: str | None
    created_at: datetime
    closed_at: datetime | None
    pending_offer: str | None = Field(
        description="The reference of the offer now held for this entry, if any."
    )
    referral_reference: str | None = Field(
        description="The referral the entry became, once an offer was accepted."
    )


class EntryList(ApiModel):
    items: list[EntryOut]


class OfferOut(ApiModel):
    reference: str
    status: str = Field(description="pending, accepted, declined, expired, lapsed or withdrawn.")
    entry_reference: str
    hospital: NamedRef
    department: NamedRef
    service_date: date
    slot: SlotOut
    resident_name_masked: str
    offered_at: datetime
    expires_at: datetime = Field(
        description="The slot is held until then (never past its public release, R6); accept before it."
    )


class OfferList(ApiModel):
    items: list[OfferOut]
