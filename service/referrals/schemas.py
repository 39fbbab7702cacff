"""Booking, cancelling and reading referrals."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from service.kit.bounds import Instant
from service.kit.ids import DbId
from service.kit.resources import Modality, ResourceKind
from service.kit.schemas import ApiModel

Icd10 = Annotated[
    str,
    StringConstraints(strip_whitespace=True, to_upper=True, pattern=r"^[A-Z][0-9]{2}(\.[0-9A-Z]{1,4})?$"),
]


class ResidentRef(ApiModel):
    id_number: str = Field(
        min_length=15, max_length=20, description="18-character resident ID (real name, R8)."
    )
    name: str = Field(min_length=1, max_length=100)


class Consultation(ApiModel):
    encounter_id: str = Field(
        min_length=1, max_length=64, description="The visit the referral comes from (R9)."
    )
    encountered_at: Instant


class BookingIn(ApiModel):
    slot_id: DbId
    referring_doctor_code: str = Field(
        min_length=1,
        max_length=64,
        description="Code of the caller's own doctor who referred (the family doctor).",
    )
    resident: ResidentRef
    consultation: Consultation
    diagnoses: list[Icd10] = Field(min_length=1, max_length=10, description="ICD-10 codes (R10).")


class CancelIn(ApiModel):
    reason: str = Field(min_length=1, max_length=500)


class HotlineCancelIn(ApiModel):
    reference: str = Field(min_length=1, max_length=20)
    verification_code: str = Field(pattern=r"^[0-9]{6}$")
    reason: str = Field(min_length=1, max_length=500)


class SlotOut(ApiModel):
    id: int
    number: int
    external_id: str | None
    starts_at: datetime
    ends_at: datetime


class NamedRef(ApiModel):
    id: int
    code: str
    name: str


class DoctorOut(ApiModel):
    code: str
    name: str
    title: str


class WardOut(ApiModel):
    code: str
    name: str


class Notice(ApiModel):
    """What the family doctor tells the patient after booking (R11)."""

    hospital: str
    department: str
    resource_kind: ResourceKind
    modality: Modality | None = Field(description="The examination's modality, e.g. CT.")
    ward: str | None = Field(description="The ward's name, for a bed.")
    doctor: str | None = Field(description="Always named for outpatient visits; optional otherwise.")
    doctor_title: str | None
    service_date: date
    period: str
    time_band: str = Field(description="HH:MM-HH:MM, Beijing time; for a bed, the admission window.")
    slot_number: int = Field(description="The number (号序); for a bed, the bed number.")
    reference: str
    how_to_cancel: str
    cancel_hotline: str
    cancel_deadline: datetime
    no_show_rule: str
    hospital_address: str | None = Field(
        description="The hospital's street address, when the registry has it."
    )
    hospital_postal_code: str | None
    hospital_phone: str | None = Field(description="The hospital's public phone, when the registry has it.")
    what_to_bring: str = Field(
        description="What the patient brings to the visit, from the hospital's policy."
    )


class AttendanceOut(ApiModel):
    """What the hospital reported after the slot (R13); the service never fills it in itself."""

    outcome: Literal["attended", "no_show"]
    reported_at: datetime
    note: str | None = None


class ReceiptOut(ApiModel):
    """The hospital acknowledged the referral into its own system (R19)."""

    received_at: datetime
    his_reference: str | None = None


class ReferralOut(ApiModel):
    reference: str
    status: Literal["booked", "cancelled"]
    channel: Literal["referral_pool"] = "referral_pool"
    priority: bool = Field(True, description="R17: the hospital gives pool referrals priority.")
    verification_code: str | None = Field(
        None,
        description="Shown to the referring institution only; the patient gives it to the hotline.",
    )
    hospital: NamedRef
    department: NamedRef
    resource_kind: ResourceKind
    modality: Modality | None
    ward: WardOut | None
    doctor: DoctorOut | None
    slot: SlotOut
    session_external_id: str
    service_date: date
    period: str
    resident_name_masked: str
    resident_id_masked: str
    referring_institution: NamedRef
    referring_doctor: DoctorOut
    consultation: Consultation
    diagnoses: list[str]
    booked_at: datetime
    cancelled_at: datetime | None = None
    cancelled_by: str | None = None
    cancel_reason: str | None = None
    notice: Notice
    policy: str
    attendance: AttendanceOut | None = Field(
        None, description="Null until the hospital reports; an unreported referral stays null."
    )
    received: ReceiptOut | None = None


class ReferralList(ApiModel):
    items: list[ReferralOut]
    next_cursor: str | None = None


class BookableSlot(ApiModel):
    slot_id: int
    number: int
    starts_at: datetime
    ends_at: datetime
    service_date: date
    period: str
    hospital: NamedRef
    department: NamedRef
    resource_kind: ResourceKind
    modality: Modality | None
    ward: WardOut | None
    doctor: DoctorOut | None
    pool_opens_at: datetime
    public_at: datetime


class BookableSlotList(ApiModel):
    items: list[BookableSlot]
    next_cursor: int | None = None
