"""No-show bars: a resident barred from one hospital's pool for a while (R13)."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    ARRAY,
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.kit.db import Base

LIFT_KINDS = ("commission", "correction")


class NoShowBar(Base):
    """A bar on pool booking at one hospital, from ``starts_on`` to ``ends_on`` inclusive.

    ``trigger_referral_ids`` are the no-shows that reached the hospital's threshold; each
    no-show counts towards one bar only, unless that bar was lifted by a correction.
    """

    __tablename__ = "no_show_bars"
    __table_args__ = (
        CheckConstraint("ends_on >= starts_on", name="dates"),
        CheckConstraint("cardinality(trigger_referral_ids) >= 1", name="triggers"),
        CheckConstraint("lift_kind IN ('commission', 'correction')", name="lift_kind"),
        CheckConstraint(
            "(lifted_at IS NULL) = (lift_kind IS NULL) AND (lifted_at IS NULL) = (lift_reason IS NULL)",
            name="lifted",
        ),
        Index("ix_no_show_bars_hospital_resident", "hospital_id", "resident_id", "ends_on"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    resident_id: Mapped[int] = mapped_column(ForeignKey("residents.id"))
    hospital_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id"))
    starts_on: Mapped[date] = mapped_column(Date)
    ends_on: Mapped[date] = mapped_column(Date)
    trigger_referral_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lifted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lifted_by_client_id: Mapped[int | None] = mapped_column(ForeignKey("api_clients.id"))
    lift_kind: Mapped[str | None] = mapped_column(String(12))
    lift_reason: Mapped[str | None] = mapped_column(Text)
