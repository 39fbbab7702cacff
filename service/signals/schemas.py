"""Alerts as the commission reads them: the signal, its subject, and the referrals behind it."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Literal

from pydantic import Field

from service.kit.schemas import ApiModel
from service.models.signals import Signal, SubjectType
from service.referrals.schemas import NamedRef


class EvidenceReferral(ApiModel):
    """One referral behind an alert. The resident is shown masked, never by ID number."""

    reference: str
    hospital: NamedRef
    service_date: date
    booked_at: datetime
    encountered_at: datetime = Field(description="When the referring consultation took place.")
    status: Literal["booked", "cancelled"]
    cancelled_at: datetime | None = None
    cancelled_by: str | None = None
    doctor_title: str | None = Field(None, description="The title of the slot's doctor, if any.")
    resident_name_masked: str


class AlertOut(ApiModel):
    id: int
    signal: Signal
    subject_type: SubjectType
    institution: NamedRef
    doctor: NamedRef | None = Field(None, description="The family doctor, when the subject is a doctor.")
    hospital: NamedRef
    policy_id: int | None = Field(None, description="The policy whose thresholds applied; null: defaults.")
    window_hours: int
    window_start: datetime
    window_end: datetime
    value: Decimal = Field(description="The signal's value at the latest pass that found it above threshold.")
    threshold: Decimal
    events: int = Field(description="How many referrals (or cancellations) the window held.")
    status: Literal["open", "acknowledged", "closed"]
    first_seen_at: datetime
    last_seen_at: datetime
    closed_at: datetime | None = None
    acknowledged_at: datetime | None = None
    acknowledgement_note: str | None = None
    evidence: list[EvidenceReferral]


class AlertList(ApiModel):
    items: list[AlertOut]
    next_cursor: str | None = None


class AcknowledgeIn(ApiModel):
    note: str | None = Field(None, min_length=1, max_length=1000)


class ConflictParty(ApiModel):
    """One institution's declaration behind a name conflict; the name masked, no ID number."""

    institution: NamedRef
    contract_no: str
    name_masked: str
    declared_at: datetime = Field(description="When the contract carrying this name was last synced.")


class IdentityConflictOut(ApiModel):
    id: int
    signal: Literal["identity_name_conflict"]
    status: Literal["open", "acknowledged", "closed"]
    first_seen_at: datetime
    last_seen_at: datetime = Field(description="When a sync last brought a new or changed declaration.")
    closed_at: datetime | None = Field(None, description="When a sync left every institution agreeing.")
    acknowledged_at: datetime | None = None
    acknowledgement_note: str | None = None
    declarations: list[ConflictParty]


class IdentityConflictList(ApiModel):
    items: list[IdentityConflictOut]
    next_cursor: str | None = None
