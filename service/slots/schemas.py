"""What a HIS pushes, and what it gets back."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from service.abuse.bounds import max_items
from service.kit.bounds import Day, Instant, UtcInstant
from service.kit.ids import MAX_ID
from service.kit.resources import Modality, ResourceKind
from service.kit.schemas import ApiModel, ApiPart
from service.models.registry import Title

# What one push may carry: one transaction locks and writes all of it (docs/abuse-limits.md).
MAX_PUSH_SESSIONS = 500
MAX_PUSH_SLOTS = 20_000
MAX_SESSION_SLOTS = 500

Period = Literal["morning", "afternoon", "evening"]
Location = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class DepartmentIn(ApiPart):
    code: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    specialty: str | None = Field(
        default=None,
        max_length=40,
        description="Specialty key matched by policies, e.g. cardiology.",
    )


class DoctorIn(ApiPart):
    code: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=100)
    title: Title


class WardIn(ApiPart):
    code: str = Field(min_length=1, max_length=64, description="The HIS's ward code (病区).")
    name: str = Field(min_length=1, max_length=200)


class SlotIn(ApiPart):
    number: int = Field(
        gt=0,
        le=10_000,
        description="The slot's number within the session (号序); for a bed session, the bed.",
    )
    external_id: str | None = Field(default=None, max_length=64)
    starts_at: UtcInstant = Field(description="For a bed: the start of the day's admission window.")
    ends_at: UtcInstant = Field(description="For a bed: the end of the day's admission window.")
    reserved: bool | None = Field(
        default=None,
        description="Only for hospitals that mark pool slots themselves; ignored otherwise.",
    )


class SessionIn(ApiPart):
    external_id: str = Field(min_length=1, max_length=64, description="The HIS's session ID.")
    version: int = Field(ge=0, le=MAX_ID, description="Monotonic per session; older versions are ignored.")
    department: DepartmentIn
    resource_kind: ResourceKind = Field(
        default="outpatient",
        description="What the slots are (R18): outpatient visits, examinations on a modality, "
        "or inpatient beds of a ward for one bed day.",
    )
    modality: Modality | None = Field(default=None, description="Required for an examination session only.")
    ward: WardIn | None = Field(default=None, description="Required for a bed session only.")
    doctor: DoctorIn | None = Field(
        default=None, description="Required for an outpatient session; optional for examinations and beds."
    )
    service_date: Day = Field(description="A year back to two years ahead of today (Beijing).")
    period: Period
    public_at: Instant = Field(description="The hospital's normal public release instant.")
    status: Literal["active", "withdrawn"] = "active"
    withdrawn_reason: str | None = Field(default=None, max_length=500)
    location: Location | None = Field(
        default=None,
        description="Where the patient goes, e.g. 门诊楼3层B区; printed on the referral slip (R11).",
    )
    slots: list[SlotIn] = Field(default_factory=list, max_length=MAX_SESSION_SLOTS)


class SessionPush(ApiModel):
    sessions: list[SessionIn] = Field(
        min_length=1,
        json_schema_extra=max_items(MAX_PUSH_SESSIONS),
        description=f"At most {MAX_PUSH_SESSIONS} sessions and {MAX_PUSH_SLOTS} slots in all per push, "
        "since one push is one transaction; more is refused with 422 `too_many_items`. Split a larger "
        "schedule into several pushes (e.g. by department or by service date): sessions are "
        "independent, so the pushes may go in any order.",
    )


class ItemError(ApiModel):
    code: str
    detail: str
    slot_number: int | None = None


class ShortfallOut(ApiModel):
    department_code: str
    service_date: date
    resource_kind: ResourceKind
    kind: Literal["ratio", "senior_share", "lead_time"]
    required: int
    actual: int


class SessionResult(ApiModel):
    external_id: str
    session_id: int | None = Field(
        default=None,
        description="The pool's ID of the session (its FHIR Schedule id); null when rejected. "
        "DELETE /v1/hospital/sessions/{session_id} removes a session pushed in error.",
    )
    result: Literal["created", "updated", "unchanged", "stale", "withdrawn", "rejected"]
    version: int
    errors: list[ItemError] = Field(default_factory=list)
    pool_slot_numbers: list[int] = Field(
        default_factory=list,
        description="Slots of this session held for the pool (reserved or booked) as the whole push "
        "left them, by number.",
    )
    pool_slot_ids: list[int] = Field(
        default_factory=list,
        description="The pool's IDs of the same slots (the `slot_id` family doctors book), in the "
        "order of `pool_slot_numbers`.",
    )
    pool_opens_at: datetime | None = None
    public_at: datetime | None = None
    shortfalls: list[ShortfallOut] = Field(default_factory=list)


class ReservationChange(ApiModel):
    """A session this push did not create or update whose pool slots it changed (R1–R4)."""

    session_id: int
    external_id: str
    department_code: str
    service_date: date
    resource_kind: ResourceKind
    pool_slot_numbers: list[int] = Field(description="The session's pool slots now, by number.")
    pool_slot_ids: list[int] = Field(description="Their IDs, in the order of `pool_slot_numbers`.")
    added_slot_numbers: list[int] = Field(description="Slots the push moved into the pool.")
    removed_slot_numbers: list[int] = Field(
        description="Slots the push moved out of the pool, before their pool window opened: yours "
        "again, as any slot outside the pool."
    )


class PushResult(ApiModel):
    results: list[SessionResult]
    reservation_changes: list[ReservationChange] = Field(
        default_factory=list,
        description="The reservation is chosen for each department-day as a whole, so a push can "
        "move slots of the day's other sessions in or out of the pool until their pool window "
        "opens. Each such session is listed once, with its pool slots as the push left them "
        "(sessions that items of this push created or updated are in `results` instead).",
    )


class ShortfallRow(ApiModel):
    hospital_id: int
    department_code: str
    department_name: str
    service_date: date
    resource_kind: ResourceKind
    kind: str
    required: int
    actual: int
    policy_code: str
    policy_version: int
    recorded_at: datetime


class ShortfallList(ApiModel):
    items: list[ShortfallRow]


class SessionRemoved(ApiModel):
    session_id: int
    external_id: str
    status: Literal["removed"]
    cancelled_referrals: list[str] = Field(description="References of the referrals the removal cancelled.")


class SlotState(ApiModel):
    slot_id: int
    number: int
    external_id: str | None
    starts_at: datetime
    ends_at: datetime
    status: Literal["public", "reserved", "booked", "returned"] = Field(
        description="`reserved`: held for the pool, not booked; `booked`: booked through the pool; "
        "`returned`: held for the pool until `public_at`, then back to you (R6); `public`: yours."
    )
    in_pool: bool = Field(description="Held for the pool now: reserved or booked.")


class SessionState(ApiModel):
    session_id: int
    external_id: str
    version: int
    status: Literal["active", "withdrawn"]
    department_code: str
    department_name: str
    resource_kind: ResourceKind
    modality: Modality | None
    ward_code: str | None
    doctor_code: str | None
    doctor_title: Title | None
    service_date: date
    period: Period
    pool_opens_at: datetime | None = Field(description="When family doctors may start booking (R5).")
    public_at: datetime | None
    pool_slot_numbers: list[int] = Field(description="Slots held for the pool now, by number.")
    slots: list[SlotState] = Field(description="The session's slots by number (withdrawn ones left out).")


class SessionStateList(ApiModel):
    items: list[SessionState]
    next_cursor: str | None = Field(description="Pass back as `cursor` for the next page; null on the last.")
