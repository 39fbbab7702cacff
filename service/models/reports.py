"""Per-session referral counts, maintained by triggers on ``referrals`` (revision 0011)."""

from __future__ import annotations

from datetime import date

from sqlalchemy import Date, ForeignKey, Index, Integer
from sqlalchemy.orm import Mapped, mapped_column

from service.kit.db import Base


class ReferralCount(Base):
    """How many referrals of one session (at the referral's hospital and date) are in each state.

    Written only by the database triggers; compliance reports read it. ``bookings``
    counts every referral, cancelled ones included.
    """

    __tablename__ = "referral_counts"
    __table_args__ = (Index("ix_referral_counts_hospital_date", "hospital_id", "service_date"),)

    session_id: Mapped[int] = mapped_column(ForeignKey("clinic_sessions.id"), primary_key=True)
    hospital_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), primary_key=True)
    service_date: Mapped[date] = mapped_column(Date, primary_key=True)
    bookings: Mapped[int] = mapped_column(Integer)
    cancelled: Mapped[int] = mapped_column(Integer)
    attended: Mapped[int] = mapped_column(Integer)
    no_show: Mapped[int] = mapped_column(Integer)
