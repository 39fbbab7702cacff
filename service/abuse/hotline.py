"""Failed hotline verifications, counted per reference and per hotline client (docs/abuse-limits.md).

A verification code has six digits, so without a limit it is guessed in minutes. Each subject
(a reference, whether or not a referral has it, and a hotline API client) has one row that
counts its failures in a window from its first one; reaching the limit locks the subject.
The rows are locked for the whole transaction, so concurrent guesses are counted one by one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.clock import instant
from service.kit.config import Settings
from service.kit.errors import TooManyRequests
from service.models.abuse import HotlineAttempts


@dataclass(frozen=True)
class HotlineLimits:
    """How many failures lock a reference or a client, and for how long."""

    reference_max_failures: int = 5
    reference_lock: timedelta = timedelta(minutes=15)
    client_max_failures: int = 50
    client_window: timedelta = timedelta(minutes=60)

    @classmethod
    def from_settings(cls, settings: Settings) -> HotlineLimits:
        return cls(
            reference_max_failures=settings.hotline_reference_max_failures,
            reference_lock=timedelta(minutes=settings.hotline_reference_lock_minutes),
            client_max_failures=settings.hotline_client_max_failures,
            client_window=timedelta(minutes=settings.hotline_client_window_minutes),
        )


@dataclass
class Attempts:
    """The locked rows of one verification: the hotline client's and the reference's."""

    client: HotlineAttempts
    reference: HotlineAttempts


def _subject_of_client(client_id: int) -> str:
    return f"client:{client_id}"


def _subject_of_reference(reference: str) -> str:
    return f"reference:{reference}"


async def lock_attempts(*, session: AsyncSession, client_id: int, reference: str, now: datetime) -> Attempts:
    """Take the rows of the client and the reference FOR UPDATE, creating them if new."""
    subjects = sorted([_subject_of_client(client_id), _subject_of_reference(reference)])
    # Sorted, so two verifications always lock in the same order ("client:" < "reference:").
    await session.execute(
        insert(HotlineAttempts)
        .values(
            [{"subject": s, "failures": 0, "window_started_at": now, "locked_until": None} for s in subjects]
        )
        .on_conflict_do_nothing(index_elements=["subject"])
    )
    rows = {
        row.subject: row
        for row in await session.scalars(
            select(HotlineAttempts)
            .where(HotlineAttempts.subject.in_(subjects))
            .order_by(HotlineAttempts.subject)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    }
    return Attempts(
        client=rows[_subject_of_client(client_id)], reference=rows[_subject_of_reference(reference)]
    )


def _locked_until(row: HotlineAttempts, now: datetime) -> datetime | None:
    return row.locked_until if row.locked_until is not None and row.locked_until > now else None


def refusal_if_locked(attempts: Attempts, now: datetime) -> TooManyRequests | None:
    """429 ``verification_locked`` while the reference or the client is locked, else None."""
    for row, whose in (
        (attempts.reference, "this reference"),
        (attempts.client, "this hotline client"),
    ):
        until = _locked_until(row, now)
        if until is not None:
            return TooManyRequests(
                "verification_locked",
                f"Too many failed verifications for {whose}; try again after {instant(until)}.",
                retry_after=math.ceil((until - now).total_seconds()),
            )
    return None


def _count_failure(
    row: HotlineAttempts, now: datetime, *, max_failures: int, window: timedelta, lock: timedelta
) -> None:
    if row.failures == 0 or now >= row.window_started_at + window:
        row.failures = 0
        row.window_started_at = now
    row.failures += 1
    if row.failures >= max_failures:
        row.locked_until = now + lock
        row.failures = 0


def count_failure(attempts: Attempts, now: datetime, limits: HotlineLimits) -> None:
    """One more failed verification of the reference and of the client; lock either at its limit."""
    _count_failure(
        attempts.reference,
        now,
        max_failures=limits.reference_max_failures,
        window=limits.reference_lock,
        lock=limits.reference_lock,
    )
    _count_failure(
        attempts.client,
        now,
        max_failures=limits.client_max_failures,
        window=limits.client_window,
        lock=limits.client_window,
    )
