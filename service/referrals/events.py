"""What the referral events tell a HIS, built from the view of a referral, never the API answer."""

from __future__ import annotations

from typing import Any

from service.kit.clock import instant
from service.referrals.views import ReferralView
from service.slots.returns import session_event_data


def referral_event_data(view: ReferralView) -> dict[str, Any]:
    """What a HIS needs to act on a referral; never the ID number or the verification code."""
    referral, slot, doctor, referring = view.referral, view.slot, view.doctor, view.referring_doctor
    return {
        "referral": {
            "reference": referral.reference,
            "status": referral.status,
            "channel": "referral_pool",
            "priority": True,  # R17: the hospital gives pool referrals priority
        },
        "slot": {
            "number": slot.number,
            "external_id": slot.external_id,
            "starts_at": instant(slot.starts_at),
            "ends_at": instant(slot.ends_at),
        },
        "session": session_event_data(view.clinic_session),
        "department": {"code": view.department.code, "name": view.department.name},
        "doctor": {"code": doctor.code, "name": doctor.name, "title": doctor.title} if doctor else None,
        "patient": {"name_masked": view.resident_name_masked},
        "referring": {
            "institution": {"code": view.booker.code, "name": view.booker.name},
            "doctor": {"name": referring.name, "title": referring.title},
        },
        "consultation": {
            "encounter_id": referral.encounter_id,
            "encountered_at": instant(referral.encountered_at),
        },
        "diagnoses": list(referral.diagnoses),
    }
