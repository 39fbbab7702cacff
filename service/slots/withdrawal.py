"""Withdrawing a session: its booked referrals cancelled, its slots out of the pool (R13).

This is the one deliberate upward import of the package layers (docs/architecture.md):
slots sit below referrals, but a hospital's 停诊 must cancel what was booked on the
session, with the same events, notices and counts as any cancellation, so it goes
through the referrals package's own function. The import-linter contract names it.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.context import Actor
from service.kit.crypto import Crypto
from service.models.slots import ClinicSession
from service.referrals.cancellation import cancel_for_withdrawal
from service.slots.returns import withdraw_slots


async def withdraw_session(
    *, session: AsyncSession, actor: Actor, crypto: Crypto, clinic_session: ClinicSession, reason: str
) -> None:
    """Cancel the session's booked referrals (by ``hospital``), then withdraw its slots."""
    await cancel_for_withdrawal(
        session=session, actor=actor, crypto=crypto, clinic_session=clinic_session, reason=reason
    )
    await withdraw_slots(session, clinic_session)
