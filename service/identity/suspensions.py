"""Refusing suspended subjects: the checks every request and every booking make (R14)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, ColumnExpressionArgument, and_, or_, select

from service.kit.clock import instant
from service.kit.errors import Forbidden
from service.models.supervision import AccessSuspension

REFUSAL_CODES = {
    "api_client": "client_suspended",
    "institution": "institution_suspended",
    "doctor": "doctor_suspended",
}
_WHO = {"api_client": "This API client", "institution": "This institution", "doctor": "The referring doctor"}


def in_force(now: datetime) -> ColumnElement[bool]:
    """Open (not reinstated) and not lapsed at ``now``."""
    return and_(
        AccessSuspension.reinstated_at.is_(None),
        or_(AccessSuspension.until.is_(None), AccessSuspension.until > now),
    )


def blocking_suspension(
    now: datetime, *, client_id: ColumnExpressionArgument[int], organisation_id: ColumnExpressionArgument[int]
) -> Any:
    """A scalar subquery: the first suspension in force of the client or its organisation, if any.

    Correlated into the authentication query, so the check costs no extra round trip; the
    partial unique index on (subject_type, subject_id) answers it.
    """
    return (
        select(AccessSuspension.id)
        .where(
            in_force(now),
            or_(
                and_(AccessSuspension.subject_type == "api_client", AccessSuspension.subject_id == client_id),
                and_(
                    AccessSuspension.subject_type == "institution",
                    AccessSuspension.subject_id == organisation_id,
                ),
            ),
        )
        .order_by(AccessSuspension.subject_type)  # 'api_client' before 'institution'
        .limit(1)
        .scalar_subquery()
    )


def refusal(suspension: AccessSuspension) -> Forbidden:
    """The 403 a suspended subject gets, with a stable code per subject type."""
    verb = "revoked" if suspension.mode == "revoked" else "suspended"
    detail = f"{_WHO[suspension.subject_type]}'s access to the pool has been {verb} by the commission (R14)."
    extra: dict[str, Any] = {"mode": suspension.mode}
    if suspension.until is not None:
        extra["until"] = instant(suspension.until)
    return Forbidden(REFUSAL_CODES[suspension.subject_type], detail, **extra)


def suspension_in_force(subject_type: str, subject_id: ColumnExpressionArgument[int], now: datetime) -> Any:
    """A scalar subquery: the suspension in force against one subject, if any.

    Correlated into the query that finds the subject, so the check costs no extra round trip.
    """
    return (
        select(AccessSuspension.id)
        .where(
            AccessSuspension.subject_type == subject_type,
            AccessSuspension.subject_id == subject_id,
            in_force(now),
        )
        .limit(1)
        .scalar_subquery()
    )
