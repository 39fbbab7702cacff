"""Per-session referral counts (revision 0010) and the closed-day report summary (revision 0017)."""

from __future__ import annotations

from datetime import date

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    text,
)
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


class _SummaryDay:
    """What a compliance report counts over the sessions of one service date and kind (revision 0017).

    Rows exist only for the days of ``report_summary_window`` and are written only by the
    database: the closing job (service/reports/summary.py) and the triggers that recompute a
    closed day when one of its sources changes. ``sessions`` counts the sessions not removed
    (a report row exists only where it is positive); ``policy_ids`` are the distinct versions
    of the active ones. The other figures are the report's, before the ratios. No foreign
    keys: every row is derived from rows that have them.
    """

    service_date: Mapped[date] = mapped_column(Date)
    resource_kind: Mapped[str] = mapped_column(String(12))
    sessions: Mapped[int] = mapped_column(Integer)
    policy_ids: Mapped[list[int] | None] = mapped_column(ARRAY(BigInteger))
    offered: Mapped[int] = mapped_column(Integer)
    reserved: Mapped[int] = mapped_column(Integer)
    senior_reserved: Mapped[int] = mapped_column(Integer)
    returned: Mapped[int] = mapped_column(Integer)
    bookings: Mapped[int] = mapped_column(Integer)
    cancelled: Mapped[int] = mapped_column(Integer)
    attended: Mapped[int] = mapped_column(Integer)
    no_show: Mapped[int] = mapped_column(Integer)
    ratio_short: Mapped[int] = mapped_column(Integer)
    senior_short: Mapped[int] = mapped_column(Integer)
    lead_short: Mapped[int] = mapped_column(Integer)


class ReportHospitalDay(_SummaryDay, Base):
    """A closed day's figures for one hospital and kind: what hospital, region and alliance reports read."""

    __tablename__ = "report_hospital_days"
    __table_args__ = (PrimaryKeyConstraint("hospital_id", "service_date", "resource_kind"),)

    hospital_id: Mapped[int] = mapped_column(BigInteger)


class ReportDepartmentDay(_SummaryDay, Base):
    """A closed day's figures for one department and kind: what department reports read."""

    __tablename__ = "report_department_days"
    __table_args__ = (PrimaryKeyConstraint("hospital_id", "service_date", "resource_kind", "department_id"),)

    hospital_id: Mapped[int] = mapped_column(BigInteger)
    department_id: Mapped[int] = mapped_column(BigInteger)


class ReportSummaryWindow(Base):
    """The closed days, ``closed_from`` to ``closed_through``: the days the summary holds.

    One row at most (none: no day is closed yet). Only the closing job writes it, widening it
    one day per transaction; it never narrows, so a report may read it before its statement.
    """

    __tablename__ = "report_summary_window"
    __table_args__ = (
        CheckConstraint("id", name="one_row"),
        CheckConstraint("closed_from <= closed_through", name="ordered"),
    )

    id: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=text("true"))
    closed_from: Mapped[date] = mapped_column(Date)
    closed_through: Mapped[date] = mapped_column(Date)
