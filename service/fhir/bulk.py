"""SMART Scheduling Links bulk publication: generated on request, cached per region.

The published set is the pool's open availability in a region: every slot held for the pool
(reserved or booked) of an active session that has not started, whose FHIR status is "free"
(bookable now) or "busy" (booked), of every resource kind (visits, examinations, beds: R18);
with the Schedules and Locations those slots hang on.

Files are not rewritten on every change. A request first asks the database for a fingerprint
of the rows the files are built from (one aggregate query over the same joins), plus the
next instant at which a status turns by time alone (a window opens or closes, a slot starts).
While neither has moved, the cached generation is served; otherwise it is rebuilt, in one
REPEATABLE READ snapshot so that the fingerprint and the files describe the same data.

The fingerprint is read in the request's unit of work. The rebuild is not: the unit's
transaction has already begun at READ COMMITTED, where each statement sees its own snapshot,
and a generation is shared by every later request of the region, not this request's work. So
the rebuild opens a REPEATABLE READ transaction of its own on the same engine (a second
pooled connection, held only while it reads), and ends it; it writes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, String, case, cast, func, literal, select
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from service.fhir import resources
from service.fhir.service import link_templates, region_names, slot_link
from service.fhir.validation import checked
from service.kit import bounds
from service.kit.regions import within
from service.models.registry import Department, Doctor, Organisation, RegionNoticeSettings
from service.models.slots import ClinicSession, Slot
from service.registry.service import divisions

TYPES = ("Location", "Schedule", "Slot")
PUBLISHED_STATUSES = ("free", "busy")  # the two Slot statuses SMART Scheduling Links defines


@dataclass(frozen=True)
class Generation:
    """One published data set: the key it was built for, when, and one NDJSON body per type."""

    etag: str
    transaction_time: datetime
    files: dict[str, bytes]


def _candidates(now: datetime, region_code: str) -> Select[Any]:
    """Pool-held slots of active sessions that have not started, in the region, with their context."""
    return (
        select(Slot, ClinicSession, Department, Doctor, Organisation, resources.slot_status(now))
        .join(ClinicSession, ClinicSession.id == Slot.session_id)
        .join(Department, Department.id == ClinicSession.department_id)
        .outerjoin(Doctor, Doctor.id == ClinicSession.doctor_id)  # examinations and beds may have none
        .join(Organisation, Organisation.id == Slot.hospital_id)
        .where(
            resources.pool_held_clause(),
            Slot.starts_at > now,
            ClinicSession.status == "active",
            ClinicSession.service_date.between(bounds.EARLIEST, bounds.LATEST),
            within(Organisation.region_code, region_code),
        )
    )


async def _fingerprint(session: AsyncSession, now: datetime, region_code: str) -> str:
    """A digest of every column the files are built from, and of the next time-driven change."""
    # Nullable columns are coalesced: concat_ws skips NULLs, which would let two rows collide.
    columns = [
        Slot.id, Slot.status, Slot.number, func.coalesce(Slot.external_id, ""), Slot.starts_at,
        Slot.ends_at, Slot.pool_opens_at, Slot.public_at, Slot.resource_kind, ClinicSession.id,
        ClinicSession.version, ClinicSession.updated_at, ClinicSession.resource_kind,
        func.coalesce(ClinicSession.modality, ""), func.coalesce(ClinicSession.ward_code, ""),
        func.coalesce(ClinicSession.ward_name, ""), func.coalesce(ClinicSession.doctor_title, ""),
        Department.name, func.coalesce(Department.specialty, ""), func.coalesce(Doctor.name, ""),
        Organisation.name, Organisation.code, Organisation.region_code,
        func.coalesce(Organisation.address_line, ""), func.coalesce(Organisation.postal_code, ""),
        func.coalesce(Organisation.phone, ""),
    ]  # fmt: skip
    row_text = func.concat_ws("|", *[cast(c, String) for c in columns])
    next_change = func.least(
        case((Slot.pool_opens_at > now, Slot.pool_opens_at)),
        case((Slot.public_at > now, Slot.public_at)),
        Slot.starts_at,
    )
    stmt = _candidates(now, region_code).with_only_columns(
        func.count(),
        func.md5(func.string_agg(row_text, aggregate_order_by(literal("\n"), Slot.id))),
        func.min(next_change),
    )
    count, digest, until = (await session.execute(stmt)).one()
    # The booking deep-link templates that can apply here: the region's own divisions and those above.
    links = (
        await session.execute(
            select(RegionNoticeSettings.region_code, RegionNoticeSettings.booking_link_template)
            .where(
                within(RegionNoticeSettings.region_code, region_code)
                | RegionNoticeSettings.region_code.in_(divisions(region_code))
            )
            .order_by(RegionNoticeSettings.region_code)
        )
    ).all()
    key = f"{region_code}:{count}:{digest}:{until.isoformat() if until else '-'}:{json.dumps([*map(list, links)])}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _ndjson(items: list[dict[str, Any]]) -> bytes:
    return b"".join(
        json.dumps(checked(item), ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        for item in items
    )


async def _generate(engine: AsyncEngine, now: datetime, region_code: str) -> Generation:
    async with AsyncSession(engine, expire_on_commit=False) as session:
        await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        etag = await _fingerprint(session, now, region_code)
        stmt = _candidates(now, region_code).where(resources.slot_status(now).in_(PUBLISHED_STATUSES))
        rows = (await session.execute(stmt.order_by(Slot.id))).all()
        hospitals = {hosp.id: hosp for *_, hosp, _ in rows}
        names = await region_names(session, list(hospitals.values()))
        templates = await link_templates(session, hospitals.values())
    schedules = {cs.id: (cs, dept, doc) for _, cs, dept, doc, _, _ in rows}
    files = {
        "Location": _ndjson([resources.location(h, names) for _, h in sorted(hospitals.items())]),
        "Schedule": _ndjson([resources.schedule(*schedules[k]) for k in sorted(schedules)]),
        "Slot": _ndjson(
            [
                resources.slot(slot, cs, status, slot_link(templates, slot, hosp))
                for slot, cs, _, _, hosp, status in rows
            ]
        ),
    }
    return Generation(etag=etag, transaction_time=now, files=files)


class BulkPublication:
    """The latest generation per region, rebuilt only when its fingerprint moves."""

    def __init__(self) -> None:
        self._generations: dict[str, Generation] = {}
        self._lock = asyncio.Lock()

    async def current(self, *, session: AsyncSession, now: datetime, region_code: str) -> Generation:
        """The region's generation as of ``now``: ``session`` (the request's) reads the fingerprint;
        a rebuild reads in a snapshot of its own (see the module's docstring)."""
        etag = await _fingerprint(session, now, region_code)
        cached = self._generations.get(region_code)
        if cached is not None and cached.etag == etag:
            return cached
        async with self._lock:  # one rebuild at a time; waiters then find it done
            cached = self._generations.get(region_code)
            if cached is not None and cached.etag == etag:
                return cached
            bind = session.bind
            engine = bind.engine if isinstance(bind, AsyncConnection) else bind
            assert isinstance(engine, AsyncEngine), "a request's session is bound to the database"
            generation = await _generate(engine, now, region_code)
            self._generations[region_code] = generation
            return generation
