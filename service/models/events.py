"""The transactional outbox: one row per change a hospital must act on."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import BigInteger, DateTime, ForeignKey, Identity, Index, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from service.kit.db import Base

EventType = Literal[
    "referral.booked",
    "referral.cancelled",
    "slots.returned",
    "referral.attendance_recorded",
    "access.revoked",
    "access.reinstated",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)


class Event(Base):
    """A change for one hospital, written in the same transaction as the change itself."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_hospital_id_id", "hospital_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    hospital_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    type: Mapped[str] = mapped_column(String(40))
    # The Standard Webhooks body: {"type", "timestamp", "data"}.
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
