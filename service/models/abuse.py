"""State of the abuse limits, kept in PostgreSQL so that every replica sees the same counts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, DateTime, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from service.kit.db import Base


class RateLimitBucket(Base):
    """One token bucket per API client: tokens left as of ``updated_at`` (docs/abuse-limits.md)."""

    __tablename__ = "rate_limit_buckets"

    client_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("api_clients.id", ondelete="CASCADE"), primary_key=True
    )
    tokens: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Whether the request that last touched the bucket took a token; RETURNING reports it.
    allowed: Mapped[bool] = mapped_column(Boolean)


class HotlineAttempts(Base):
    """Failed hotline verifications of one subject: ``reference:<ref>`` or ``client:<id>``.

    A subject with ``failures`` reaching its limit inside its window is locked until
    ``locked_until``; the row is reused, so a subject never has more than one.
    """

    __tablename__ = "hotline_attempts"
    __table_args__ = (CheckConstraint("failures >= 0", name="failures"),)

    subject: Mapped[str] = mapped_column(String(40), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    window_started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
