"""The sandbox clock's one row (docs/sandbox.md)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, SmallInteger
from sqlalchemy.orm import Mapped, mapped_column

from service.kit.db import Base


class SandboxClock(Base):
    """Present only in a sandbox database: how far ahead of the wall clock its time runs.

    Every process of the sandbox reads ``offset_us`` at the start of each request and at
    every pass of its loops, so all of them see one time. It only ever grows.
    """

    __tablename__ = "sandbox_clock"
    __table_args__ = (
        CheckConstraint("id = 1", name="one_row"),
        CheckConstraint("offset_us >= 0", name="offset_forward"),
    )

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    offset_us: Mapped[int] = mapped_column(BigInteger, server_default="0")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    moved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
