"""Per-session slot counts, maintained by triggers on ``slots`` and ``clinic_sessions`` (revision 0010)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import BigInteger, Date, DateTime, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

from service.kit.db import Base


class Xid8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction ID, as ``pg_current_xact_id()`` returns it."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"


class AvailabilityCount(Base):
    """How many live slots of one session and pool window are in each status.

    Written only by the database triggers; the feed reads it. Which reserved
    slots are pool-open, pending or returned is decided at read time from
    ``pool_opens_at``/``public_at`` and the clock, so no job has to move counts
    when a window opens or closes.
    """

    __tablename__ = "availability_counts"
    __table_args__ = (Index("ix_availability_counts_hospital_date", "hospital_id", "service_date"),)

    session_id: Mapped[int] = mapped_column(ForeignKey("clinic_sessions.id"), primary_key=True)
    pool_opens_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    public_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    hospital_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("organisations.id"))
    department_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("departments.id"))
    service_date: Mapped[date] = mapped_column(Date)
    # Copied from the session by the triggers, so the feed groups without a join: the period, the
    # kind (R18) and what the kind is grouped by (a visit's doctor title, an examination's
    # modality, a bed day's ward), with the ward's name.
    period: Mapped[str] = mapped_column(String(10))
    resource_kind: Mapped[str] = mapped_column(String(12))
    doctor_title: Mapped[str | None] = mapped_column(String(20))
    modality: Mapped[str | None] = mapped_column(String(20))
    ward_code: Mapped[str | None] = mapped_column(String(64))
    ward_name: Mapped[str | None] = mapped_column(String(200))
    public: Mapped[int] = mapped_column(Integer)
    reserved: Mapped[int] = mapped_column(Integer)
    booked: Mapped[int] = mapped_column(Integer)
    returned: Mapped[int] = mapped_column(Integer)
    changed_xid: Mapped[int] = mapped_column(Xid8())
