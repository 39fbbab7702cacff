"""The patient notice (R11) as structured data and as SMS text."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from service.kit.schemas import ApiModel
from service.referrals.schemas import Notice


class SmsOut(ApiModel):
    text: str = Field(description="Chinese SMS text for the family doctor app to send; no signature.")
    characters: int = Field(description="Length in UCS-2 code units, as carriers count.")
    segments: int = Field(description="SMS segments: 70 characters alone, 67 each when concatenated.")


class PatientNotice(ApiModel):
    """What the patient is told after booking (R11), and what the printed slip carries."""

    reference: str
    status: Literal["booked", "cancelled"]
    notice: Notice
    location: str | None = Field(description="Where to go, when the hospital gave it.")
    resident_name_masked: str
    resident_id_masked: str
    verification_code: str | None = Field(
        description="For hotline cancellation (R12); shown to the referring institution only."
    )
    referring_institution: str
    referring_doctor: str
    cancelled_at: datetime | None
    sms: SmsOut
