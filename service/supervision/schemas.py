"""Suspensions, revocations and reinstatements (R14); audit trail pages (R15)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from service.kit.bounds import Instant, QueryInstant
from service.kit.ids import DbId
from service.kit.schemas import ApiModel
from service.referrals.schemas import NamedRef

SubjectType = Literal["doctor", "institution", "api_client"]
Mode = Literal["suspended", "revoked"]


class SuspensionIn(ApiModel):
    """Name the subject by ``subject_id``, or by code: ``organisation_code`` for an institution,
    ``organisation_code`` and ``doctor_code`` for a family doctor. API clients go by id only."""

    subject_type: SubjectType
    subject_id: DbId | None = Field(None, description="doctors.id, organisations.id or api_clients.id.")
    organisation_code: str | None = Field(None, min_length=1, max_length=64)
    doctor_code: str | None = Field(None, min_length=1, max_length=64)
    mode: Mode = Field(
        description="suspended: temporary, may lapse at `until`; revoked: until reinstated. Both refuse access."
    )
    reason: str = Field(min_length=1, max_length=1000)
    until: Instant | None = Field(None, description="Only for `suspended`: it lapses by itself then.")
    cancel_active_referrals: bool = Field(
        False,
        description="Also cancel the subject's booked referrals whose slot has not started; "
        "their slots go back to the pool or the public. Otherwise they stay valid.",
    )

    @model_validator(mode="after")
    def _one_way_to_name(self) -> Self:
        by_code = self.organisation_code is not None or self.doctor_code is not None
        if (self.subject_id is None) == (not by_code):
            raise ValueError("give either subject_id or the subject's code(s), not both")
        if by_code:
            wanted = {
                "institution": (True, False),
                "doctor": (True, True),
                "api_client": (False, False),
            }[self.subject_type]
            if (self.organisation_code is not None, self.doctor_code is not None) != wanted:
                raise ValueError(
                    "an institution is named by organisation_code; a doctor by organisation_code "
                    "and doctor_code; an API client by subject_id only"
                )
        if self.until is not None and self.mode != "suspended":
            raise ValueError("only a suspension can have an end (until); a revocation lasts until reinstated")
        return self


class ReinstateIn(ApiModel):
    reason: str = Field(min_length=1, max_length=1000)


class SuspensionOut(ApiModel):
    id: int
    subject_type: SubjectType
    subject_id: int
    subject: str = Field(
        description="Who: the doctor's code and name, the institution's or the client's name."
    )
    organisation: NamedRef = Field(description="The subject's organisation.")
    mode: Mode
    reason: str
    until: datetime | None
    in_force: bool = Field(description="Refusing requests now: not reinstated and not lapsed.")
    created_at: datetime
    created_by_client_id: int
    cancelled_references: list[str] = Field(
        description="Referrals the commission cancelled with this action."
    )
    reinstated_at: datetime | None = None
    reinstated_by_client_id: int | None = Field(None, description="Null when a suspension lapsed by itself.")
    reinstate_reason: str | None = None


class SuspensionList(ApiModel):
    items: list[SuspensionOut]
    next_cursor: str | None = None


class AuditEntryOut(ApiModel):
    id: int
    at: datetime
    request_id: str | None
    actor: str = Field(description="The actor's role, or the name of a system loop.")
    actor_client_id: int | None
    actor_org_id: int | None
    action: str
    code: str | None
    hospital_id: int | None
    resident_id: int | None
    resident_id_masked: str | None = Field(description="The resident's ID number, masked.")
    referral_id: int | None
    reason: str | None
    detail: dict[str, Any]


class AuditPage(ApiModel):
    items: list[AuditEntryOut]
    next_cursor: str | None = None


class AuditSearch(ApiModel):
    """The filters of ``GET /v1/audit``, in a body, so a resident's ID number stays out of URLs."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    resident_id_number: str | None = Field(
        None, min_length=15, max_length=20, description="Found through the blind index."
    )
    actor_client_id: DbId | None = None
    actor_org_id: DbId | None = None
    action: str | None = Field(None, min_length=1, max_length=40)
    from_: QueryInstant | None = Field(None, alias="from", description="Inclusive; with its UTC offset.")
    to: QueryInstant | None = Field(None, description="Exclusive; with its UTC offset.")
    cursor: str | None = Field(
        None, max_length=200, pattern=r"^[A-Za-z0-9_-]+$", description="next_cursor of the previous page"
    )
    limit: int = Field(100, ge=1, le=500)
