"""Building the patient notice and its SMS text from a referral the caller may see (R11, R15)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.kit.clock import zh_instant
from service.kit.context import Actor, Caller
from service.kit.crypto import Crypto
from service.models.registry import RegionNoticeSettings
from service.referrals.reading import shows_code, visible_referral
from service.referrals.schemas import Notice
from service.registry.service import notice_settings_by_region
from service.slip.schemas import PatientNotice, SmsOut, SmsTemplateOut

TITLES_ZH = {
    "chief": "主任医师",
    "associate_chief": "副主任医师",
    "attending": "主治医师",
    "resident": "住院医师",
}
PERIODS_ZH = {"morning": "上午", "afternoon": "下午", "evening": "晚间"}
WEEKDAYS_ZH = "一二三四五六日"
MODALITIES_ZH = {
    "X-ray": "X线",
    "mammography": "乳腺钼靶",
    "ultrasound": "超声",
    "endoscopy": "内镜",
    "ECG": "心电图",
}


def booked_for_zh(notice: Notice) -> str:
    """What was booked (R18): an outpatient visit, an examination on a modality, or a bed in a ward."""
    if notice.resource_kind == "examination" and notice.modality:
        return f"{MODALITIES_ZH.get(notice.modality, notice.modality)}检查"
    if notice.resource_kind == "bed":
        return f"住院床位（{notice.ward}）" if notice.ward else "住院床位"
    return "门诊"


def doctor_zh(notice: Notice) -> str:
    """The doctor and title, or empty when the booking names none (examinations, beds)."""
    if notice.doctor is None:
        return ""
    title = TITLES_ZH.get(notice.doctor_title or "", notice.doctor_title or "")
    return f"{notice.doctor}{title}"


def number_zh(notice: Notice) -> str:
    return f"{notice.slot_number}床" if notice.resource_kind == "bed" else f"{notice.slot_number}号"


# Two concatenated UCS-2 segments hold 2 × 67 = 134 characters. The sending app's gateway
# prepends its own signature (【…】, required by Chinese carriers); 14 characters are left for it.
SMS_SEGMENT_ALONE = 70
SMS_SEGMENT_CONCATENATED = 67
SMS_SIGNATURE_ALLOWANCE = 14
SMS_MAX_CHARACTERS = 2 * SMS_SEGMENT_CONCATENATED - SMS_SIGNATURE_ALLOWANCE


def zh_date(day: date) -> str:
    return f"{day.month}月{day.day}日（周{WEEKDAYS_ZH[day.weekday()]}）"


def sms_units(text: str) -> int:
    """Carriers count UCS-2 code units: a character outside the BMP costs two."""
    return len(text.encode("utf-16-le")) // 2


def sms_out(text: str, template: SmsTemplateOut | None = None) -> SmsOut:
    units = sms_units(text)
    segments = 1 if units <= SMS_SEGMENT_ALONE else math.ceil(units / SMS_SEGMENT_CONCATENATED)
    return SmsOut(text=text, characters=units, segments=segments, template=template)


def _shorten(name: str, units: int) -> str:
    """``name`` cut to at most ``units`` code units, marked with an ellipsis when cut."""
    if sms_units(name) <= units:
        return name
    kept = ""
    for char in name:
        if sms_units(kept + char) > units - 1:
            break
        kept += char
    return kept + "…"


def sms_text(
    notice: Notice,
    *,
    status: str,
    location: str | None,
    verification_code: str | None,
    limit: int = SMS_MAX_CHARACTERS,
) -> str:
    """Short Chinese SMS text: hospital, department, date, time band, reference, how to cancel.

    Optional parts (location, then doctor) are dropped when they do not fit; if the
    rest still does not fit, the hospital and department names are shortened.
    """
    when = f"{zh_date(notice.service_date)}{PERIODS_ZH.get(notice.period, '')}{notice.time_band}"

    def compose(hospital: str, department: str, doctor: bool, place: bool) -> str:
        if status == "cancelled":
            return (
                f"您在{hospital}{department}{when}的转诊预约（编号{notice.reference}）已取消。"
                "如需重新预约，请联系您的家庭医生。"
            )
        who = doctor_zh(notice) if doctor else ""
        what = "" if notice.resource_kind == "outpatient" else booked_for_zh(notice)
        code = f"，验证码{verification_code}" if verification_code else ""
        where = f"地点：{location}。" if place and location else ""
        return (
            f"您已预约{hospital}{department}{what}{who}，{when}，{number_zh(notice)}，"
            f"转诊编号{notice.reference}{code}。{where}请带身份证和转诊单就诊。"
            f"如需取消，请于{zh_instant(notice.cancel_deadline)}前拨打{notice.cancel_hotline}。"
        )

    for doctor, place in ((True, True), (False, True), (False, False)):
        text = compose(notice.hospital, notice.department, doctor, place)
        if sms_units(text) <= limit:
            return text
    # The names are all that is left to give: split what remains between them, hospital first.
    spare = limit - sms_units(compose("", "", False, False))
    hospital = _shorten(notice.hospital, max(spare - min(sms_units(notice.department), spare // 3), 4))
    department = _shorten(notice.department, max(spare - sms_units(hospital), 2))
    return compose(hospital, department, False, False)


# Aliyun accepts at most 35 characters in a notification template's free-text variable; names from
# a HIS may be longer, so they are cut with "…" as in the text. Tencent Cloud's bound is set per
# template at registration; a region registers its templates for these values (docs/slip.md).
SMS_PARAM_MAX_CHARACTERS = 35
# The parameters of each template, in the order Tencent Cloud's positional {1}, {2}… take them.
SMS_BOOKED_PARAMS: tuple[str, ...] = (
    "hospital",
    "department",
    "time",
    "number",
    "reference",
    "code",
    "deadline",
    "hotline",
)
SMS_CANCELLED_PARAMS: tuple[str, ...] = ("hospital", "department", "time", "reference")


def sms_template(
    notice: Notice, *, status: str, verification_code: str | None, settings: RegionNoticeSettings | None
) -> SmsTemplateOut | None:
    """The notice as a registered template and its parameters, or None when there is none to fill.

    A booking's template carries the verification code (the patient cancels with it, R12), so a reader
    who is not shown the code (the hospital) gets none. No parameter carries a name or an ID number.
    """
    if settings is None or not settings.sms_sign_name:
        return None
    if status == "cancelled":
        code, names = settings.sms_template_cancelled, SMS_CANCELLED_PARAMS
    else:
        code, names = settings.sms_template_booked, SMS_BOOKED_PARAMS
    if code is None or (status != "cancelled" and verification_code is None):
        return None
    values = {
        "hospital": _shorten(notice.hospital, SMS_PARAM_MAX_CHARACTERS),
        "department": _shorten(notice.department, SMS_PARAM_MAX_CHARACTERS),
        "time": f"{zh_date(notice.service_date)}{PERIODS_ZH.get(notice.period, '')}{notice.time_band}",
        "number": number_zh(notice),
        "reference": notice.reference,
        "code": verification_code or "",
        "deadline": zh_instant(notice.cancel_deadline),
        "hotline": notice.cancel_hotline,
    }
    params = {name: values[name] for name in names}
    return SmsTemplateOut(
        sign_name=settings.sms_sign_name,
        template_code=code,
        params=params,
        param_set=list(params.values()),
    )


@dataclass(frozen=True)
class SlipContent:
    """What the slip prints: the notice, and the ID number masked as the hospital's policy says."""

    notice: PatientNotice
    resident_id_on_slip: str


async def slip_content(
    *, session: AsyncSession, actor: Actor, caller: Caller, crypto: Crypto, reference: str
) -> SlipContent:
    """The slip of a referral the caller may see (404 otherwise); the read is audited (R15)."""
    notice, resident_id_on_slip = await _read(
        session=session, actor=actor, caller=caller, crypto=crypto, reference=reference, purpose="slip"
    )
    return SlipContent(notice=notice, resident_id_on_slip=resident_id_on_slip)


async def patient_notice(
    *,
    session: AsyncSession,
    actor: Actor,
    caller: Caller,
    crypto: Crypto,
    reference: str,
    purpose: Literal["slip", "notice"],
) -> PatientNotice:
    """The notice of a referral the caller may see (404 otherwise); the read is audited (R15)."""
    notice, _ = await _read(
        session=session, actor=actor, caller=caller, crypto=crypto, reference=reference, purpose=purpose
    )
    return notice


async def _read(
    *,
    session: AsyncSession,
    actor: Actor,
    caller: Caller,
    crypto: Crypto,
    reference: str,
    purpose: Literal["slip", "notice"],
) -> tuple[PatientNotice, str]:
    view = await visible_referral(session=session, caller=caller, crypto=crypto, reference=reference)
    referral, clinic_session = view.referral, view.clinic_session
    # The hotline asks for this code (R12): the patient gets it from the referring institution only,
    # and a cancelled referral has nothing left to cancel.
    code = view.verification_code() if shows_code(caller) and referral.status == "booked" else None
    await record(
        session=session,
        actor=actor,
        action=f"referral.{purpose}_read",
        hospital_id=referral.hospital_id,
        resident_id=referral.resident_id,
        referral_id=referral.id,
        detail={"status": referral.status, "verification_code_shown": code is not None},
    )
    notice = view.notice()
    # The referring institution's app sends the SMS, through its region's gateway account.
    region = view.booker.region_code
    settings = (await notice_settings_by_region(session, [region]))[region]
    template = sms_template(notice, status=referral.status, verification_code=code, settings=settings)
    patient_notice = PatientNotice(
        reference=referral.reference,
        status=referral.status,
        notice=notice,
        location=clinic_session.location,
        resident_name_masked=view.resident_name_masked,
        resident_id_masked=view.resident_id_masked,
        verification_code=code,
        referring_institution=view.booker.name,
        referring_doctor=view.referring_doctor.name,
        cancelled_at=referral.cancelled_at,
        sms=sms_out(
            sms_text(
                notice, status=referral.status, location=clinic_session.location, verification_code=code
            ),
            template,
        ),
    )
    return patient_notice, view.resident_id_slip_masked
