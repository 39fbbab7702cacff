"""Building FHIR R4 resources (as JSON objects) from the pool's rows.

Ids are the database ids (``Location`` = a hospital, ``Schedule`` = one doctor's clinic
session, ``Slot`` = a numbered slot), except ``Appointment``, whose id is the referral's
public reference. Extensions and code systems of our own live under ``BASE``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, literal
from sqlalchemy.sql.elements import Case

from service.clock import SHANGHAI
from service.referrals.schemas import ReferralOut
from service.registry.models import Department, Doctor, Organisation
from service.slots.models import ClinicSession, Slot

FHIR_VERSION = "4.0.1"
BASE = "https://slotpool.example/fhir"
EXT_POOL_RESERVED = f"{BASE}/StructureDefinition/pool-reserved"
EXT_POOL_OPENS_AT = f"{BASE}/StructureDefinition/pool-opens-at"
EXT_PUBLIC_AT = f"{BASE}/StructureDefinition/public-at"
EXT_DOCTOR_TITLE = f"{BASE}/StructureDefinition/doctor-title"
EXT_PRIORITY_REFERRAL = f"{BASE}/StructureDefinition/priority-referral"
SID_ORGANISATION = f"{BASE}/sid/organisation-code"
SID_REFERRAL = f"{BASE}/sid/referral-reference"
CS_SPECIALTY = f"{BASE}/CodeSystem/specialty"
CS_PERIOD = f"{BASE}/CodeSystem/clinic-period"
CS_PROBLEM = f"{BASE}/CodeSystem/problem"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
SERVICE_CATEGORY = "http://terminology.hl7.org/CodeSystem/service-category"

# The FHIR Slot.status of every slot, computed by the database so that a search by status
# and the status shown are one expression. Only a reserved slot inside its pool window
# (and not yet started) can be booked through the pool: that is "free". A booked slot is
# "busy". Everything else is "busy-unavailable" to the pool: slots the hospital sells itself
# (public, returned), reserved slots whose window has not opened or has closed, and slots of
# withdrawn sessions.
SLOT_STATUSES = ("free", "busy", "busy-unavailable")


def slot_status(now: datetime) -> Case[Any]:
    """SQL: the FHIR status of ``Slot`` rows as of ``now``."""
    return case(
        (Slot.status == "booked", literal("busy")),
        (
            and_(
                Slot.status == "reserved",
                Slot.pool_opens_at <= now,
                Slot.public_at > now,
                Slot.starts_at > now,
            ),
            literal("free"),
        ),
        else_=literal("busy-unavailable"),
    )


def pool_held(slot: Slot) -> bool:
    return slot.status in ("reserved", "booked")


def pool_held_clause() -> ColumnElement[bool]:
    return Slot.status.in_(("reserved", "booked"))


def instant(when: datetime) -> str:
    """FHIR instant: seconds precision with offset, in Beijing time as the hospitals read it."""
    return when.astimezone(SHANGHAI).isoformat(timespec="seconds")


def utc_instant(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=SHANGHAI)


def location(hospital: Organisation, regions: dict[str, str]) -> dict[str, Any]:
    """A hospital as a Location; ``regions`` maps GB/T 2260 codes to names."""
    code = hospital.region_code
    address: dict[str, Any] = {"use": "work", "country": "CN"}
    for key, region in (("state", code[:2] + "0000"), ("city", code[:4] + "00"), ("district", code)):
        if region in regions and not (key == "district" and region == code[:4] + "00"):
            address[key] = regions[region]
    return {
        "resourceType": "Location",
        "id": str(hospital.id),
        "identifier": [{"system": SID_ORGANISATION, "value": hospital.code}],
        "status": "active",
        "name": hospital.name,
        "mode": "instance",
        "address": address,
    }


def schedule(cs: ClinicSession, department: Department, doctor: Doctor) -> dict[str, Any]:
    """One doctor's clinic session as a Schedule at its hospital's Location."""
    specialty: dict[str, Any] = {"text": department.name}
    if department.specialty:
        specialty["coding"] = [{"system": CS_SPECIALTY, "code": department.specialty}]
    return {
        "resourceType": "Schedule",
        "id": str(cs.id),
        "identifier": [{"system": f"{BASE}/sid/clinic-session/{cs.hospital_id}", "value": cs.external_id}],
        "active": cs.status == "active",
        "serviceCategory": [{"coding": [{"system": SERVICE_CATEGORY, "code": "35", "display": "Hospital"}]}],
        "serviceType": [
            {"coding": [{"system": CS_PERIOD, "code": cs.period}], "text": f"{department.name} {cs.period}"}
        ],
        "specialty": [specialty],
        "actor": [
            {"reference": f"Location/{cs.hospital_id}"},
            {
                "type": "Practitioner",
                "display": doctor.name,
                "extension": [{"url": EXT_DOCTOR_TITLE, "valueCode": cs.doctor_title}],
            },
        ],
        "planningHorizon": {
            "start": instant(day_start(cs.service_date)),
            "end": instant(day_start(cs.service_date + timedelta(days=1))),
        },
        "comment": f"{department.name} · {doctor.name} · {cs.service_date.isoformat()} {cs.period}",
    }


def slot(row: Slot, status: str) -> dict[str, Any]:
    """A slot; pool-held ones carry the pool-reserved flag and their window's two instants."""
    extension: list[dict[str, Any]] = []
    if pool_held(row):
        extension = [
            {"url": EXT_POOL_RESERVED, "valueBoolean": True},
            {"url": EXT_POOL_OPENS_AT, "valueInstant": instant(row.pool_opens_at)},
            {"url": EXT_PUBLIC_AT, "valueInstant": instant(row.public_at)},
        ]
    resource: dict[str, Any] = {"resourceType": "Slot", "id": str(row.id)}
    if extension:
        resource["extension"] = extension
    if row.external_id:
        resource["identifier"] = [{"system": f"{BASE}/sid/slot/{row.hospital_id}", "value": row.external_id}]
    resource.update(
        {
            "schedule": {"reference": f"Schedule/{row.session_id}"},
            "status": status,
            "start": instant(row.starts_at),
            "end": instant(row.ends_at),
            "comment": f"No. {row.number}",
        }
    )
    return resource


def appointment(out: ReferralOut, *, hospital_id: int) -> dict[str, Any]:
    """A referral as an Appointment: masked patient name, never the ID number or the code."""
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": out.reference,
        "identifier": [{"system": SID_REFERRAL, "value": out.reference}],
        "status": "booked" if out.status == "booked" else "cancelled",
    }
    if out.priority:
        resource["extension"] = [{"url": EXT_PRIORITY_REFERRAL, "valueBoolean": True}]
    if out.cancel_reason:
        resource["cancelationReason"] = {"text": out.cancel_reason}
    resource.update(
        {
            "serviceCategory": [
                {"coding": [{"system": SERVICE_CATEGORY, "code": "35", "display": "Hospital"}]}
            ],
            "reasonCode": [{"coding": [{"system": ICD10, "code": code}]} for code in out.diagnoses],
            "description": " · ".join(
                [out.department.name, *([out.doctor.name] if out.doctor else []), f"No. {out.slot.number}"]
            ),
            "start": instant(out.slot.starts_at),
            "end": instant(out.slot.ends_at),
            "slot": [{"reference": f"Slot/{out.slot.id}"}],
            "created": instant(out.booked_at),
            "participant": [
                {"actor": {"type": "Patient", "display": out.resident_name_masked}, "status": "accepted"},
                *(
                    [
                        {
                            "type": [{"coding": [{"system": PARTICIPATION_TYPE, "code": "PPRF"}]}],
                            "actor": {"type": "Practitioner", "display": out.doctor.name},
                            "status": "accepted",
                        }
                    ]
                    if out.doctor
                    else []
                ),
                {
                    "type": [{"coding": [{"system": PARTICIPATION_TYPE, "code": "REF"}]}],
                    "actor": {
                        "type": "Practitioner",
                        "display": f"{out.referring_doctor.name} ({out.referring_institution.name})",
                    },
                    "status": "accepted",
                },
                {"actor": {"reference": f"Location/{hospital_id}"}, "status": "accepted"},
            ],
        }
    )
    return resource


ISSUE_TYPES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    409: "conflict",
    410: "deleted",
    422: "processing",
    500: "exception",
    503: "transient",
}


def operation_outcome(status: int, code: str, detail: str) -> dict[str, Any]:
    """An error as FHIR clients expect it; ``code`` is the same stable code /v1 uses."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error" if status < 500 else "fatal",
                "code": ISSUE_TYPES.get(status, "processing"),
                "details": {"coding": [{"system": CS_PROBLEM, "code": code}], "text": detail},
                "diagnostics": detail,
            }
        ],
    }


def bundle(
    *, entries: list[dict[str, Any]], base: str, self_url: str, next_url: str | None, now: datetime
) -> dict[str, Any]:
    """A searchset page with its self link and, when there is more, a next link."""
    links = [{"relation": "self", "url": self_url}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    body: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": utc_instant(now),
        "link": links,
    }
    if entries:  # FHIR JSON never carries an empty array
        body["entry"] = [
            {
                "fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}",
                "resource": resource,
                "search": {"mode": "match"},
            }
            for resource in entries
        ]
    return body
