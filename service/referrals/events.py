"""What the referral events tell a HIS, and the booker institution, built from the view of a
referral, never the API answer."""

from __future__ import annotations

from typing import Any

from service.kit.clock import instant
from service.models.slots import ClinicSession, Slot
from service.referrals.views import ReferralView
from service.slots.returns import session_event_data, ward_data


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


def institution_referral_data(view: ReferralView) -> dict[str, Any]:
    """What the booker institution is told of its own referral: where and when, for whom (the
    masked name) and which of its doctors referred. Never the ID number, nor what is the
    hospital's own: its external ids of slot and session, doctor code, HIS reference, priority
    flag; nor the verification code, which the institution handed to the patient at booking."""
    referral, slot, cs, doctor = view.referral, view.slot, view.clinic_session, view.doctor
    return {
        "referral": {"reference": referral.reference, "status": referral.status},
        "hospital": {"code": view.hospital.code, "name": view.hospital.name},
        "department": {"code": view.department.code, "name": view.department.name},
        "session": institution_session_data(cs),
        "slot": institution_slot_data(slot),
        "doctor": {"name": doctor.name, "title": doctor.title} if doctor else None,
        "patient": {"name_masked": view.resident_name_masked},
        "referring_doctor": {"code": view.referring_doctor.code, "name": view.referring_doctor.name},
    }


def institution_session_data(cs: ClinicSession) -> dict[str, Any]:
    """A session as an institution's events describe it: the day and the resource (R18), not
    the hospital's own ID for it."""
    return {
        "service_date": cs.service_date.isoformat(),
        "period": cs.period,
        "resource_kind": cs.resource_kind,
        "modality": cs.modality,
        "ward": ward_data(cs),
    }


def institution_slot_data(slot: Slot) -> dict[str, Any]:
    """A slot as an institution's events describe it: its number and times."""
    return {"number": slot.number, "starts_at": instant(slot.starts_at), "ends_at": instant(slot.ends_at)}
