"""Building FHIR R4 resources (as JSON objects) from the pool's rows.

Ids are the database ids (``Location`` = a hospital, ``Schedule`` = one clinic session: a
doctor's clinic, a modality's examination block or a ward's bed day, ``Slot`` = a numbered
slot or bed), except ``Appointment``, whose id is the referral's public reference. Extensions
and code systems of our own live under ``BASE``.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, literal
from sqlalchemy.sql.elements import Case

from service.kit.clock import SHANGHAI
from service.kit.clock import instant as clock_instant
from service.kit.resources import MODALITIES
from service.models.registry import Department, Doctor, Organisation
from service.models.slots import ClinicSession, Slot
from service.referrals.views import ReferralView
from service.slip.service import MODALITIES_ZH

FHIR_VERSION = "4.0.1"
BASE = "https://slotpool.example/fhir"
EXT_POOL_RESERVED = f"{BASE}/StructureDefinition/pool-reserved"
EXT_POOL_OPENS_AT = f"{BASE}/StructureDefinition/pool-opens-at"
EXT_PUBLIC_AT = f"{BASE}/StructureDefinition/public-at"
# The session's doctor, on the Schedule: sub-extensions ``name`` (string) and ``title`` (code). Not an
# actor: SMART Scheduling Links gives a Schedule one actor, a reference to its Location, and no
# Practitioner resource is served for a second one to reference.
EXT_SESSION_DOCTOR = f"{BASE}/StructureDefinition/session-doctor"
# SMART Scheduling Links: a web link into the booking portal where this slot can be booked.
EXT_BOOKING_DEEP_LINK = "http://fhir-registry.smarthealthit.org/StructureDefinition/booking-deep-link"
EXT_PRIORITY_REFERRAL = f"{BASE}/StructureDefinition/priority-referral"
EXT_RESOURCE_KIND = f"{BASE}/StructureDefinition/resource-kind"
SID_ORGANISATION = f"{BASE}/sid/organisation-code"
SID_REFERRAL = f"{BASE}/sid/referral-reference"
CS_SPECIALTY = f"{BASE}/CodeSystem/specialty"
CS_PERIOD = f"{BASE}/CodeSystem/clinic-period"
CS_PROBLEM = f"{BASE}/CodeSystem/problem"
CS_RESOURCE_KIND = f"{BASE}/CodeSystem/resource-kind"
CS_MODALITY = f"{BASE}/CodeSystem/modality"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
SERVICE_CATEGORY = "http://terminology.hl7.org/CodeSystem/service-category"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"

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
    return slot.status in ("reserved", "offered", "booked")


def pool_held_clause() -> ColumnElement[bool]:
    return Slot.status.in_(("reserved", "offered", "booked"))


def instant(when: datetime) -> str:
    """FHIR instant (and dateTime): the service's one time format, RFC 3339 in UTC with ``Z``
    (``kit.clock.instant``; docs/webhooks.md, "Time")."""
    return clock_instant(when)


utc_instant = instant


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=SHANGHAI)


# --- what a session offers: its resource kind (R18), and the modality of an examination --------

# The kind as an encounter class (HL7 v3 ActCode): visits and examinations are ambulatory, a bed
# is an inpatient stay. The kind's own code (CS_RESOURCE_KIND) rides beside it in the same concept.
KIND_ACT_CODES = {
    "outpatient": ("AMB", "ambulatory"),
    "examination": ("AMB", "ambulatory"),
    "bed": ("IMP", "inpatient encounter"),
}
KIND_ZH = {"outpatient": "门诊", "examination": "检查", "bed": "住院床位"}
# The DICOM acquisition modality (CID 29) of each modality on the pool's closed list. PET-CT and
# PET-MRI are both PT (the emission part names the study), SPECT is NM, DSA is XA.
DICOM_MODALITIES = {
    "CT": ("CT", "Computed Tomography"),
    "MRI": ("MR", "Magnetic Resonance"),
    "PET-CT": ("PT", "Positron emission tomography"),
    "PET-MRI": ("PT", "Positron emission tomography"),
    "SPECT": ("NM", "Nuclear Medicine"),
    "X-ray": ("DX", "Digital Radiography"),
    "mammography": ("MG", "Mammography"),
    "ultrasound": ("US", "Ultrasound"),
    "DSA": ("XA", "X-Ray Angiography"),
    "endoscopy": ("ES", "Endoscopy"),
    "ECG": ("ECG", "Electrocardiography"),
}
assert set(DICOM_MODALITIES) == set(MODALITIES), "every modality needs its DICOM code"
NOT_IMAGING = frozenset({"endoscopy", "ECG"})
HOSPITAL = ("35", "Hospital")
IMAGING = ("30", "Specialist Radiology/Imaging")

# Every service a session can offer, as (kind, modality): the vocabulary of service-type searches.
SERVICES: tuple[tuple[str, str | None], ...] = (
    ("outpatient", None),
    *(("examination", m) for m in MODALITIES),
    ("bed", None),
)


def kind_extension(kind: str) -> dict[str, Any]:
    """The resource kind as a bare code, so that machines filter without reading text."""
    return {"url": EXT_RESOURCE_KIND, "valueCode": kind}


def service_category(kind: str, modality: str | None) -> list[dict[str, Any]]:
    """HL7 service-category: imaging examinations are radiology/imaging, everything else is hospital."""
    code, display = IMAGING if modality is not None and modality not in NOT_IMAGING else HOSPITAL
    return [{"coding": [{"system": SERVICE_CATEGORY, "code": code, "display": display}]}]


def _service_concepts(kind: str, modality: str | None) -> list[dict[str, Any]]:
    """The searchable serviceType concepts: the kind, then an examination's modality."""
    act, act_display = KIND_ACT_CODES[kind]
    concepts: list[dict[str, Any]] = [
        {
            "coding": [
                {"system": CS_RESOURCE_KIND, "code": kind},
                {"system": ACT_CODE, "code": act, "display": act_display},
            ],
            "text": KIND_ZH[kind],
        }
    ]
    if modality is not None:
        dicom, dicom_display = DICOM_MODALITIES[modality]
        concepts.append(
            {
                "coding": [
                    {"system": CS_MODALITY, "code": modality},
                    {"system": DICOM, "code": dicom, "display": dicom_display},
                ],
                "text": f"{MODALITIES_ZH.get(modality, modality)}检查",
            }
        )
    return concepts


def service_codings(kind: str, modality: str | None) -> list[tuple[str, str]]:
    """(system, code) of every coding a service-type search can match on this service."""
    return [
        (c["system"], c["code"]) for concept in _service_concepts(kind, modality) for c in concept["coding"]
    ]


def service_type(
    *, hospital_id: int, kind: str, modality: str | None, ward_code: str | None, ward_name: str | None
) -> list[dict[str, Any]]:
    """The kind and modality concepts, and for a bed the ward, coded in the hospital's own ward list."""
    concepts = _service_concepts(kind, modality)
    if ward_code is not None and ward_name is not None:
        concepts.append(
            {
                "coding": [
                    {
                        "system": f"{BASE}/CodeSystem/ward/{hospital_id}",
                        "code": ward_code,
                        "display": ward_name,
                    }
                ],
                "text": ward_name,
            }
        )
    return concepts


def session_service_type(cs: ClinicSession) -> list[dict[str, Any]]:
    return service_type(
        hospital_id=cs.hospital_id,
        kind=cs.resource_kind,
        modality=cs.modality,
        ward_code=cs.ward_code,
        ward_name=cs.ward_name,
    )


def headline(kind: str, doctor_name: str | None, services: list[dict[str, Any]]) -> str:
    """What a session is, in a word: a visit's doctor; an examination's modality or a bed's ward."""
    if kind == "outpatient" and doctor_name is not None:
        return doctor_name
    text: str = services[-1]["text"]
    return text


def number_label(kind: str, number: int) -> str:
    return f"Bed {number}" if kind == "bed" else f"No. {number}"


def location(hospital: Organisation, regions: dict[str, str]) -> dict[str, Any]:
    """A hospital as a Location; ``regions`` maps GB/T 2260 codes to names. The street line, postal
    code and phone come from the registry (PATCH /v1/organisations/{id}), when they are set."""
    code = hospital.region_code
    address: dict[str, Any] = {"use": "work"}
    if hospital.address_line:
        address["line"] = [hospital.address_line]
    for key, region in (("state", code[:2] + "0000"), ("city", code[:4] + "00"), ("district", code)):
        if region in regions and not (key == "district" and region == code[:4] + "00"):
            address[key] = regions[region]
    if hospital.postal_code:
        address["postalCode"] = hospital.postal_code
    address["country"] = "CN"
    resource: dict[str, Any] = {
        "resourceType": "Location",
        "id": str(hospital.id),
        "identifier": [{"system": SID_ORGANISATION, "value": hospital.code}],
        "status": "active",
        "name": hospital.name,
        "mode": "instance",
    }
    if hospital.phone:
        resource["telecom"] = [{"system": "phone", "value": hospital.phone, "use": "work"}]
    resource["address"] = address
    return resource


def doctor_extension(name: str, title: str | None) -> dict[str, Any]:
    """The session's doctor, named, with the title as the HIS sent it."""
    parts: list[dict[str, Any]] = [{"url": "name", "valueString": name}]
    if title:
        parts.append({"url": "title", "valueCode": title})
    return {"url": EXT_SESSION_DOCTOR, "extension": parts}


def schedule(cs: ClinicSession, department: Department, doctor: Doctor | None) -> dict[str, Any]:
    """One clinic session as a Schedule whose one actor is its hospital's Location (SMART Scheduling
    Links); the doctor, when the session names one, is in an extension and the comment."""
    specialty: dict[str, Any] = {"text": department.name}
    if department.specialty:
        specialty["coding"] = [{"system": CS_SPECIALTY, "code": department.specialty}]
    extension = [kind_extension(cs.resource_kind)]
    if doctor is not None:
        extension.append(doctor_extension(doctor.name, cs.doctor_title))
    services = session_service_type(cs)
    what = headline(cs.resource_kind, doctor.name if doctor else None, services)
    return {
        "resourceType": "Schedule",
        "id": str(cs.id),
        "extension": extension,
        "identifier": [{"system": f"{BASE}/sid/clinic-session/{cs.hospital_id}", "value": cs.external_id}],
        "active": cs.status == "active",
        "serviceCategory": service_category(cs.resource_kind, cs.modality),
        "serviceType": [
            *services,
            {"coding": [{"system": CS_PERIOD, "code": cs.period}], "text": f"{department.name} {cs.period}"},
        ],
        "specialty": [specialty],
        "actor": [{"reference": f"Location/{cs.hospital_id}"}],
        "planningHorizon": {
            "start": instant(day_start(cs.service_date)),
            "end": instant(day_start(cs.service_date + timedelta(days=1))),
        },
        "comment": f"{department.name} · {what} · {cs.service_date.isoformat()} {cs.period}",
    }


def slot(row: Slot, cs: ClinicSession, status: str, booking_link: str | None = None) -> dict[str, Any]:
    """A slot (a bed, for a bed session) with its session's kind; pool-held ones carry the pool flag
    and their window's two instants. A ``free`` slot carries the region's booking deep link, when
    the region has a template (docs/fhir.md)."""
    extension: list[dict[str, Any]] = [kind_extension(row.resource_kind)]
    if pool_held(row):
        extension += [
            {"url": EXT_POOL_RESERVED, "valueBoolean": True},
            {"url": EXT_POOL_OPENS_AT, "valueInstant": instant(row.pool_opens_at)},
            {"url": EXT_PUBLIC_AT, "valueInstant": instant(row.public_at)},
        ]
    if booking_link is not None and status == "free":
        extension.append({"url": EXT_BOOKING_DEEP_LINK, "valueUrl": booking_link})
    resource: dict[str, Any] = {"resourceType": "Slot", "id": str(row.id), "extension": extension}
    if row.external_id:
        resource["identifier"] = [{"system": f"{BASE}/sid/slot/{row.hospital_id}", "value": row.external_id}]
    resource.update(
        {
            "serviceCategory": service_category(cs.resource_kind, cs.modality),
            "serviceType": session_service_type(cs),
            "schedule": {"reference": f"Schedule/{row.session_id}"},
            "status": status,
            "start": instant(row.starts_at),
            "end": instant(row.ends_at),
            "comment": number_label(row.resource_kind, row.number),
        }
    )
    return resource


def appointment(view: ReferralView) -> dict[str, Any]:
    """A referral as an Appointment: masked patient name, never the ID number or the code.

    The booked doctor is a participant only when the session names one: an examination or a bed
    usually has none.
    """
    referral, slot, cs, doctor = view.referral, view.slot, view.clinic_session, view.doctor
    hospital_id = referral.hospital_id
    services = service_type(
        hospital_id=hospital_id,
        kind=cs.resource_kind,
        modality=cs.modality,
        ward_code=cs.ward_code,
        ward_name=cs.ward_name,
    )
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": referral.reference,
        "extension": [kind_extension(cs.resource_kind)],
        "identifier": [{"system": SID_REFERRAL, "value": referral.reference}],
        "status": "booked" if referral.status == "booked" else "cancelled",
    }
    # Pool referrals always carry the priority marker (R17).
    resource["extension"].append({"url": EXT_PRIORITY_REFERRAL, "valueBoolean": True})
    if referral.cancel_reason:
        resource["cancelationReason"] = {"text": referral.cancel_reason}
    resource.update(
        {
            "serviceCategory": service_category(cs.resource_kind, cs.modality),
            "serviceType": services,
            "reasonCode": [{"coding": [{"system": ICD10, "code": code}]} for code in referral.diagnoses],
            "description": " · ".join(
                [
                    view.department.name,
                    headline(cs.resource_kind, doctor.name if doctor else None, services),
                    number_label(cs.resource_kind, slot.number),
                ]
            ),
            "start": instant(slot.starts_at),
            "end": instant(slot.ends_at),
            "slot": [{"reference": f"Slot/{slot.id}"}],
            "created": instant(referral.booked_at),
            "participant": [
                {"actor": {"type": "Patient", "display": view.resident_name_masked}, "status": "accepted"},
                *(
                    [
                        {
                            "type": [{"coding": [{"system": PARTICIPATION_TYPE, "code": "PPRF"}]}],
                            "actor": {"type": "Practitioner", "display": doctor.name},
                            "status": "accepted",
                        }
                    ]
                    if doctor
                    else []
                ),
                {
                    "type": [{"coding": [{"system": PARTICIPATION_TYPE, "code": "REF"}]}],
                    "actor": {
                        "type": "Practitioner",
                        "display": f"{view.referring_doctor.name} ({view.booker.name})",
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
