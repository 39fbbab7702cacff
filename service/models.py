"""Every model, imported once so that metadata is complete (Alembic, tests)."""

from service.abuse.models import HotlineAttempts, RateLimitBucket
from service.attendance.models import NoShowBar
from service.audit.models import AuditEntry
from service.availability.models import AvailabilityCount
from service.events.models import Event
from service.policy.models import HospitalPolicy, Policy
from service.readiness import SchemaCompatibility
from service.referrals.models import IdempotencyKey, Referral
from service.registry.models import (
    Alliance,
    AllianceMember,
    ApiClient,
    Department,
    Doctor,
    Organisation,
    Region,
)
from service.reports.models import ReferralCount
from service.residents.models import FamilyDoctorContract, RegionContractSource, Resident
from service.signals.models import Alert, IdentityConflict, IdentityConflictParty
from service.slots.models import ClinicSession, ReservationShortfall, Slot
from service.supervision.models import AccessSuspension
from service.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint

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
    "ReservationShortfall",
    "Resident",
    "SchemaCompatibility",
    "Slot",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]
