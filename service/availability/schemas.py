"""What a platform reads. The feed shows counts only: no resident, referral or doctor is named."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.kit.resources import Modality, ResourceKind

Period = Literal["morning", "afternoon", "evening"]
Title = Literal["chief", "associate_chief", "attending", "resident"]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class AvailabilityQuery(_Out):
    """The query this answer is for, echoed so that the ETag covers it."""

    region: str
    date_from: date = Field(alias="from")
    date_to: date = Field(alias="to")
    hospital_id: int | None
    department_code: str | None
    resource_kind: ResourceKind | None
    modality: Modality | None
    since: str | None


class DepartmentOut(_Out):
    code: str
    name: str


class HospitalOut(_Out):
    id: int
    code: str
    name: str
    region_code: str
    departments: list[DepartmentOut] = Field(description="The departments this answer mentions.")


class AvailabilityWard(_Out):
    """A ward of the feed (named apart from the referral's ward: one schema name, one schema)."""

    code: str
    name: str


class AvailabilityItem(_Out):
    """Slot counts of one hospital, department, date, period and resource kind (R18), and within the
    kind of one doctor title (visits), modality (examinations) or ward (beds)."""

    hospital_id: int
    department_code: str
    service_date: date
    period: Period
    resource_kind: ResourceKind
    doctor_title: Title | None = Field(description="Visits only; null for examinations and beds.")
    modality: Modality | None = Field(description="Examinations only.")
    ward: AvailabilityWard | None = Field(description="Beds only.")
    public: int = Field(description="Public slots that were never held for the pool.")
    pool_pending: int = Field(description="Held for the pool; the pool window has not opened yet (R5).")
    pool_open: int = Field(description="Held for the pool and bookable by family doctors now.")
    booked: int = Field(description="Booked through the pool.")
    returned: int = Field(description="Held for the pool, unbooked when the public release came (R6).")


class DepartmentDayOut(_Out):
    hospital_id: int
    department_code: str
    service_date: date


class WaitingListOut(_Out):
    """How many residents wait for a department: a count, no personal data (docs/waitlist.md)."""

    hospital_id: int
    department_code: str
    resource_kind: str
    waiting: int = Field(description="Entries waiting now for a day in the window.")
    urgent: int = Field(description="Of them, marked urgent by their family doctor.")


class AvailabilityOut(_Out):
    query: AvailabilityQuery
    hospitals: list[HospitalOut]
    items: list[AvailabilityItem] = Field(description="Groups with at least one live slot.")
    replaces: list[DepartmentDayOut] | None = Field(
        description="Only with since: the department-days whose groups are all in items (a group "
        "missing from items now has no slots). Without since, the whole window is replaced."
    )
    waiting_lists: list[WaitingListOut] = Field(
        description="Waiting-list lengths per hospital, department and kind for days in the window: the "
        "current figure, in full with since too."
    )
    cursor: str = Field(description="Pass as since to receive only what changes after this answer.")
