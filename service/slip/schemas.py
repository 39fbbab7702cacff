"""The patient notice (R11) as structured data and as SMS text."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from service.kit.schemas import ApiModel
from service.referrals.schemas import Notice


class SmsTemplateOut(ApiModel):
    """The notice as a registered template and its parameters, for an SMS gateway (Aliyun, Tencent Cloud)
    that sends only templates it has approved. The parameters never carry a name or an ID number."""

    sign_name: str = Field(description="The region's registered signature (签名), without 【】.")
    template_code: str = Field(description="The region's template for this notice (booked or cancelled).")
    params: dict[str, str] = Field(
        description="Named parameters, as Aliyun's TemplateParam takes them; names and order in docs/slip.md."
    )
    param_set: list[str] = Field(
        description="The same values in the documented order, as Tencent Cloud's TemplateParamSet takes them."
    )


class SmsOut(ApiModel):
    text: str = Field(description="Chinese SMS text for the family doctor app to send; no signature.")
    characters: int = Field(description="Length in UCS-2 code units, as carriers count.")
    segments: int = Field(description="SMS segments: 70 characters alone, 67 each when concatenated.")
    template: SmsTemplateOut | None = Field(
        description="The same notice as template code and parameters, when the referring institution's "
        "region has set its templates (PUT /v1/regions/{code}/notice-settings); null otherwise, and for "
        "a booking read by the hospital, which is not given the verification code the template carries."
    )


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
