"""Every model, imported once so that metadata is complete (Alembic, tests)."""

from service.models.abuse import HotlineAttempts, RateLimitBucket
from service.models.attendance import NoShowBar
from service.models.audit import AuditEntry
from service.models.availability import AvailabilityCount
from service.models.events import Event
from service.models.policy import HospitalPolicy, Policy
from service.models.readiness import SchemaCompatibility
from service.models.referrals import IdempotencyKey, Referral
from service.models.registry import (
    Alliance,
    AllianceMember,
    ApiClient,
    Department,
    Doctor,
    Organisation,
    Region,
    RegionNoticeSettings,
)
from service.models.reports import ReferralCount, ReportDepartmentDay, ReportHospitalDay, ReportSummaryWindow
from service.models.residents import FamilyDoctorContract, RegionContractSource, Resident
from service.models.sandbox import SandboxClock
from service.models.signals import Alert, IdentityConflict, IdentityConflictParty
from service.models.slots import ClinicSession, ReservationShortfall, Slot
from service.models.supervision import AccessSuspension
from service.models.waitlist import WaitlistEntry, WaitlistOffer
from service.models.webhooks import WebhookAttempt, WebhookDelivery, WebhookEndpoint

__all__ = [
    "AccessSuspension",
    "Alert",
    "Alliance",
    "AllianceMember",
    "ApiClient",
    "AuditEntry",
    "AvailabilityCount",
    "ClinicSession",
    "Department",
    "Doctor",
    "Event",
    "FamilyDoctorContract",
    "HospitalPolicy",
    "HotlineAttempts",
    "IdempotencyKey",
    "IdentityConflict",
    "IdentityConflictParty",
    "NoShowBar",
    "Organisation",
    "Policy",
    "RateLimitBucket",
    "Referral",
    "ReferralCount",
    "Region",
    "RegionContractSource",
    "RegionNoticeSettings",
    "ReportDepartmentDay",
    "ReportHospitalDay",
    "ReportSummaryWindow",
    "ReservationShortfall",
    "Resident",
    "SandboxClock",
    "SchemaCompatibility",
    "Slot",
    "WaitlistEntry",
    "WaitlistOffer",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]
