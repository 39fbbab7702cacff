"""Applying pushed sessions set-based: one push, a constant number of statements (R1–R5, R19).

``push_sessions`` (``slots/service.py``) hands over runs of validated, active items in which each
session appears once. The outcome is the one of applying them one by one, in order, each in its
own savepoint: the same versions, rejections, reserved slots and shortfalls, and each result as
it stood after its own item. Only the work is arranged differently:

1. read what the run needs: the sessions it names (locked), the departments, the policies in
   force, and the slots of the sessions it changes (locked);
2. decide each item's fate from that (version, R19; no policy; a session moved; a booked slot
   changed or removed) before anything is written, so a refused item leaves nothing behind and
   no savepoint is needed;
3. upsert the departments and doctors of the accepted items, lock their department-days (in key
   order), and read the counts of the department-days' other sessions and their shortfalls;
4. apply the items in order in memory: each session's slots, the reservation over its
   department-day (``select_reserved`` with the rest of the day as a ``Tally``: only the session's
   own slots may be newly held), the shortfalls, the result;
5. write it all: new sessions in one INSERT, changed ones in one UPDATE, new slots by COPY (ids in
   the order the slots were pushed), changed slots in one UPDATE, shortfalls in two statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from operator import attrgetter
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.context import Actor
from service.kit.db import Driver, advisory_key, driver
from service.models.policy import Policy
from service.models.registry import SENIOR_TITLES, Department, Doctor, Organisation
from service.models.slots import ClinicSession, ReservationShortfall, Slot
from service.policy.service import no_policy, policies_in_force
from service.slots.reservation import NO_OTHERS, Candidate, Selection, Tally, check_marked, select_reserved
from service.slots.schemas import ItemError, SessionIn, SessionResult, ShortfallOut
from service.slots.shortfalls import ShortfallKey, write_shortfalls

POOL_HELD = frozenset(("reserved", "booked", "returned"))
POOL_LISTED = frozenset(("reserved", "booked"))  # what a result lists as held for the pool
# Keys of slots not stored yet sort after every stored slot's id, in the order they are added;
# COPY stores them in that order, so their ids keep it.
NEW_KEYS = 1 << 62

SLOT_COLUMNS = (
    "session_id",
    "resource_kind",
    "hospital_id",
    "number",
    "external_id",
    "starts_at",
    "ends_at",
    "pool_opens_at",
    "public_at",
    "status",
)

_NUMBER = attrgetter("number")
GroupKey = tuple[int, date, str]  # a department-day of one resource kind

# The columns of a stored slot a push may change, with their types; ``_Slot.changed`` has a bit for
# each but the status, which is compared with the status read.
SLOT_CHANGES = (
    ("external_id", "text"),
    ("starts_at", "timestamptz"),
    ("ends_at", "timestamptz"),
    ("public_at", "timestamptz"),
    ("pool_opens_at", "timestamptz"),
    ("status", "text"),
)
STATUS_CHANGED = 1 << 5


@dataclass(slots=True, eq=False)
class _Slot:
    key: int  # the stored id, or NEW_KEYS + n
    number: int
    status: str
    external_id: str | None
    starts_at: datetime
    ends_at: datetime
    public_at: datetime
    pool_opens_at: datetime
    stored_status: str | None = None  # as read; None for a slot not stored yet
    changed: int = 0  # a bit per column of SLOT_CHANGES (but the status) the push changed

    def update(
        self,
        external_id: str | None,
        starts_at: datetime,
        ends_at: datetime,
        public_at: datetime,
        opens_at: datetime,
    ) -> None:
        """Store a pushed slot's values, noting which differ."""
        if self.external_id != external_id:
            self.external_id = external_id
            self.changed |= 1
        if self.starts_at != starts_at:
            self.starts_at = starts_at
            self.changed |= 2
        if self.ends_at != ends_at:
            self.ends_at = ends_at
            self.changed |= 4
        if self.public_at != public_at:
            self.public_at = public_at
            self.changed |= 8
        if self.pool_opens_at != opens_at:
            self.pool_opens_at = opens_at
            self.changed |= 16

    def row_changes(self) -> int:
        return self.changed | (STATUS_CHANGED if self.status != self.stored_status else 0)


@dataclass(slots=True, eq=False)
class _Session:
    id: int | None
    external_id: str
    version: int
    department_id: int
    service_date: date
    resource_kind: str
    status: str
    doctor_title: str | None
    slots: dict[int, _Slot] = field(default_factory=dict)  # by number
    row: dict[str, Any] | None = None  # the columns to write, once applied
    _tally: Tally | None = None

    @property
    def group(self) -> GroupKey:
        return (self.department_id, self.service_date, self.resource_kind)

    def tally(self) -> Tally:
        """What this session adds to its department-day's counts (nothing unless active)."""
        if self._tally is None:
            if self.status != "active":
                self._tally = NO_OTHERS
            else:
                live = held = 0
                for slot in self.slots.values():
                    if slot.status != "withdrawn":
                        live += 1
                        held += slot.status in POOL_HELD
                senior = self.doctor_title in SENIOR_TITLES
                self._tally = Tally(
                    slots=live,
                    senior_slots=live if senior else 0,
                    held=held,
                    senior_held=held if senior else 0,
                )
        return self._tally

    def changed(self) -> None:
        self._tally = None


@dataclass(eq=False)
class _Group:
    """A department-day of one kind: its sessions this push reads slot by slot, the others counted."""

    sessions: list[_Session] = field(default_factory=list)
    counted: Tally = NO_OTHERS
    shortfalls: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (required, actual)

    def others(self, own: _Session) -> Tally:
        total = self.counted
        for s in self.sessions:
            if s is not own and s.status == "active":
                t = s.tally()
                total = Tally(
                    slots=total.slots + t.slots,
                    senior_slots=total.senior_slots + t.senior_slots,
                    held=total.held + t.held,
                    senior_held=total.senior_held + t.senior_held,
                )
        return total


def _plus(a: Tally, b: Tally) -> Tally:
    return Tally(
        a.slots + b.slots, a.senior_slots + b.senior_slots, a.held + b.held, a.senior_held + b.senior_held
    )


def pool_opens_at(public_at: datetime, policy: Policy) -> datetime:
    """R5: the pool opens the policy's lead time (at least a day) before the public release."""
    return public_at - timedelta(minutes=policy.lead_minutes)


def lead_shortfall(item: SessionIn, policy: Policy, now: datetime) -> tuple[int, int] | None:
    """R5: a push that arrives after the pool should have opened gives the pool less lead."""
    if now <= pool_opens_at(item.public_at, policy):
        return None
    actual = max(0, int((item.public_at - now).total_seconds() // 60))
    return policy.lead_minutes, actual


def _booked_changes(current: dict[int, _Slot], item: SessionIn) -> list[ItemError]:
    """R19: a slot with a pool referral is neither removed nor moved by an update (by slot number)."""
    booked = sorted((number, old) for number, old in current.items() if old.status == "booked")
    if not booked:
        return []
    incoming = {s.number: s for s in item.slots}
    errors: list[ItemError] = []
    for number, old in booked:
        new = incoming.get(number)
        if new is None or (new.starts_at, new.ends_at) != (old.starts_at, old.ends_at):
            errors.append(
                ItemError(
                    code="booked_slot_changed",
                    detail="This slot has a pool referral; it cannot be removed or moved. "
                    "Withdraw the session to cancel its referrals.",
                    slot_number=number,
                )
            )
    return errors


def _moved() -> ItemError:
    return ItemError(
        code="session_moved",
        detail="A session keeps its department, date and resource kind; withdraw it and push a new one.",
    )


def _measured(selection: Selection | None, lead: tuple[int, int] | None) -> dict[str, tuple[int, int] | None]:
    """The rules a push measured for its department-day: None for a rule met (``record_shortfalls``)."""
    if selection is None:
        measured: dict[str, tuple[int, int] | None] = {"ratio": None, "senior_share": None}
    else:
        measured = {
            "ratio": (selection.target, selection.held_count) if selection.ratio_short else None,
            "senior_share": (selection.senior_target, selection.senior_held)
            if selection.senior_short
            else None,
        }
    if lead is not None:
        measured["lead_time"] = lead
    return measured


def _result(
    cs: _Session, outcome: str, version: int, department_code: str, group: _Group | None
) -> SessionResult:
    live = sorted((s for s in cs.slots.values() if s.status != "withdrawn"), key=_NUMBER)
    # In the table's key order, by rule, as a read of the department-day's rows by its key returns them.
    shortfalls = sorted((group.shortfalls if group else {}).items())
    return SessionResult(
        external_id=cs.external_id,
        session_id=cs.id,
        result=outcome,
        version=version,
        pool_slot_numbers=[s.number for s in live if s.status in POOL_LISTED],
        pool_opens_at=live[0].pool_opens_at if live else None,
        public_at=live[0].public_at if live else None,
        shortfalls=[
            ShortfallOut(
                department_code=department_code,
                service_date=cs.service_date,
                resource_kind=cs.resource_kind,
                kind=kind,
                required=required,
                actual=actual,
            )
            for kind, (required, actual) in shortfalls
        ],
    )


def _rejected(item: SessionIn, errors: list[ItemError]) -> SessionResult:
    return SessionResult(external_id=item.external_id, result="rejected", version=item.version, errors=errors)


# --- reading -------------------------------------------------------------------------------------

SESSIONS = """
SELECT id, external_id, version, department_id, service_date, resource_kind, status, doctor_title
  FROM clinic_sessions
 WHERE hospital_id = $1 AND external_id = ANY($2::text[]) AND status <> 'removed'
 ORDER BY id
   FOR UPDATE
"""
DEPARTMENTS = "SELECT id, code FROM departments WHERE hospital_id = $1 AND (code = ANY($2::text[]) OR id = ANY($3::bigint[]))"
SLOTS = """
SELECT id, session_id, number, status, external_id, starts_at, ends_at, public_at, pool_opens_at
  FROM slots WHERE session_id = ANY($1::bigint[]) ORDER BY id
"""
# The department-days' other active sessions, counted: they are only measured, never changed.
COUNTS = """
SELECT cs.department_id, cs.service_date, cs.resource_kind, cs.doctor_title,
       count(*) AS live, count(*) FILTER (WHERE s.status IN ('reserved', 'booked', 'returned')) AS held
  FROM clinic_sessions cs JOIN slots s ON s.session_id = cs.id
 WHERE (cs.department_id, cs.service_date) IN (SELECT * FROM unnest($1::bigint[], $2::date[]))
   AND cs.status = 'active' AND s.status <> 'withdrawn' AND cs.id <> ALL($3::bigint[])
 GROUP BY cs.id
"""
SHORTFALLS = """
SELECT department_id, service_date, resource_kind, kind, required, actual
  FROM reservation_shortfalls
 WHERE (department_id, service_date) IN (SELECT * FROM unnest($1::bigint[], $2::date[]))
"""


async def _read_slots(db: Driver, sessions: dict[int, _Session], *, lock: bool) -> None:
    if not sessions:
        return
    rows = await db.fetch(SLOTS + (" FOR UPDATE" if lock else ""), list(sessions))
    for r in rows:
        sessions[r[1]].slots[r[2]] = _Slot(r[0], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[3])


# --- writing -------------------------------------------------------------------------------------

UPSERT_DEPARTMENTS = """
INSERT INTO departments (hospital_id, code, name, specialty)
SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[])
ON CONFLICT (hospital_id, code) DO UPDATE SET name = excluded.name, specialty = excluded.specialty
RETURNING id, code
"""
UPSERT_DOCTORS = """
INSERT INTO doctors (organisation_id, code, name, title)
SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[])
ON CONFLICT (organisation_id, code) DO UPDATE SET name = excluded.name, title = excluded.title
RETURNING id, code
"""
LOCK = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k"
SESSION_COLUMNS = (
    ("version", "bigint"),
    ("department_id", "bigint"),
    ("modality", "text"),
    ("ward_code", "text"),
    ("ward_name", "text"),
    ("doctor_id", "bigint"),
    ("doctor_title", "text"),
    ("service_date", "date"),
    ("period", "text"),
    ("status", "text"),
    ("withdrawn_reason", "text"),
    ("location", "text"),
    ("policy_id", "bigint"),
)
_ARRAYS = ", ".join(f"${n}::{t}[]" for n, (_, t) in enumerate(SESSION_COLUMNS, start=4))
INSERT_SESSIONS = f"""
INSERT INTO clinic_sessions (hospital_id, updated_at, external_id, resource_kind,
                             {", ".join(c for c, _ in SESSION_COLUMNS)})
SELECT $1, $2, * FROM unnest($3::text[], ${len(SESSION_COLUMNS) + 4}::text[], {_ARRAYS})
RETURNING id, external_id
"""
UPDATE_SESSIONS = f"""
UPDATE clinic_sessions cs SET updated_at = $2, {", ".join(f"{c} = u.{c}" for c, _ in SESSION_COLUMNS)}
  FROM unnest($3::bigint[], {_ARRAYS}) AS u(id, {", ".join(c for c, _ in SESSION_COLUMNS)})
 WHERE cs.id = u.id AND cs.hospital_id = $1
"""


def update_slots(changed: Sequence[tuple[_Slot, int]]) -> tuple[str, list[list[Any]]]:
    """One UPDATE for the changed slots (with their change bits), setting only the columns some changed.

    A re-push usually changes one column of a slot or none: sending the others back would cost as
    much as the change itself.
    """
    bits = 0
    for _, row in changed:
        bits |= row
    used = [n for n in range(len(SLOT_CHANGES)) if bits & (1 << n)]
    names = [SLOT_CHANGES[n][0] for n in used]
    arrays = ", ".join(f"${k}::{SLOT_CHANGES[n][1]}[]" for k, n in enumerate(used, start=2))
    sql = (
        f"UPDATE slots s SET {', '.join(f'{c} = u.{c}' for c in names)} "
        f"FROM unnest($1::bigint[], {arrays}) AS u(id, {', '.join(names)}) WHERE s.id = u.id"
    )
    slots = [slot for slot, _ in changed]
    return sql, [[slot.key for slot in slots], *([getattr(slot, name) for slot in slots] for name in names)]


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


# --- the run -------------------------------------------------------------------------------------


async def apply_sessions(
    *,
    session: AsyncSession,
    actor: Actor,
    hospital: Organisation,
    items: Sequence[SessionIn],
) -> list[SessionResult]:
    """Apply validated active items, each session at most once, as if one by one in order."""
    assert len({i.external_id for i in items}) == len(items)
    run = _Run(await driver(session), hospital, actor.now.astimezone(UTC), items)
    await run.decide(session)
    await run.prepare()
    results = [run.apply(n, item) for n, item in enumerate(items)]
    await run.write()
    forget_rows(session)
    return results


class _Run:
    """One run of a push: what it read, what it decided, and what it will write."""

    def __init__(self, db: Driver, hospital: Organisation, now: datetime, items: Sequence[SessionIn]) -> None:
        self.db = db
        self.hospital = hospital
        self.now = now
        self.items = items
        self.found: dict[str, _Session] = {}  # the stored sessions the items name, by HIS ID
        self.replays: dict[int, _Session] = {}  # by id: the sessions of unchanged or stale items
        self.changing: dict[int, _Session] = {}  # by id: the stored sessions the items may change
        self.errors: dict[int, list[ItemError]] = {}  # the refused items, by position
        self.policies: dict[tuple[str, date], Policy | None] = {}
        self.department_ids: dict[str, int] = {}
        self.department_codes: dict[int, str] = {}
        self.doctor_ids: dict[str, int] = {}
        self.groups: dict[GroupKey, _Group] = {}
        self.created: list[tuple[_Session, SessionResult]] = []
        self.new_slots: list[tuple[_Session, _Slot]] = []
        self.touched: dict[ShortfallKey, int] = {}  # a shortfall measured -> the policy that measured it
        self.next_key = NEW_KEYS

    async def decide(self, session: AsyncSession) -> None:
        """Read the sessions, departments, policies and slots, and decide every refusal."""
        db, hospital, items = self.db, self.hospital, self.items
        for r in await db.fetch(SESSIONS, hospital.id, [i.external_id for i in items]):
            self.found[r["external_id"]] = _Session(
                id=r["id"],
                external_id=r["external_id"],
                version=r["version"],
                department_id=r["department_id"],
                service_date=r["service_date"],
                resource_kind=r["resource_kind"],
                status=r["status"],
                doctor_title=r["doctor_title"],
            )
        # R19: an item no newer than its session changes nothing.
        candidates: list[int] = []
        for n, item in enumerate(items):
            cs = self.found.get(item.external_id)
            if cs is not None and cs.id is not None and item.version <= cs.version:
                self.replays[cs.id] = cs
            else:
                candidates.append(n)
        self.policies = await policies_in_force(
            session=session,
            hospital_id=hospital.id,
            wanted={(items[n].resource_kind, items[n].service_date) for n in candidates},
        )
        rows = await db.fetch(
            DEPARTMENTS,
            hospital.id,
            [items[n].department.code for n in candidates],
            [cs.department_id for cs in self.found.values()],
        )
        self.department_ids = {r["code"]: r["id"] for r in rows}
        # In the order one by one would refuse: no policy, then a session moved, then a booked slot.
        for n in candidates:
            item = items[n]
            cs = self.found.get(item.external_id)
            if self.policies[(item.resource_kind, item.service_date)] is None:
                problem = no_policy(hospital.id, item.resource_kind, item.service_date)
                self.errors[n] = [ItemError(code=problem.code, detail=problem.detail)]
            elif cs is not None and cs.group != (
                self.department_ids.get(item.department.code),
                item.service_date,
                item.resource_kind,
            ):
                self.errors[n] = [_moved()]
            elif cs is not None and cs.id is not None:
                self.changing[cs.id] = cs
        await _read_slots(db, self.changing, lock=True)
        await _read_slots(db, self.replays, lock=False)
        for n in candidates:
            cs = self.found.get(items[n].external_id)
            if n not in self.errors and cs is not None:
                booked = _booked_changes(cs.slots, items[n])
                if booked:
                    self.errors[n] = booked

    async def prepare(self) -> None:
        """Upsert the accepted items' departments and doctors (the last item's names win), lock their
        department-days in key order, and read the days' other sessions (counted) and shortfalls."""
        db, hospital, items = self.db, self.hospital, self.items
        accepted = [
            items[n] for n in range(len(items)) if n not in self.errors and not self._replay(items[n])
        ]
        departments = sorted({item.department.code: item.department for item in accepted}.items())
        if departments:
            rows = await db.fetch(
                UPSERT_DEPARTMENTS,
                hospital.id,
                [code for code, _ in departments],
                [d.name for _, d in departments],
                [d.specialty for _, d in departments],
            )
            self.department_ids.update((r["code"], r["id"]) for r in rows)
        self.department_codes = {v: k for k, v in self.department_ids.items()}
        doctors = sorted({d.code: d for item in accepted if (d := item.doctor) is not None}.items())
        if doctors:
            rows = await db.fetch(
                UPSERT_DOCTORS,
                hospital.id,
                [code for code, _ in doctors],
                [d.name for _, d in doctors],
                [d.title for _, d in doctors],
            )
            self.doctor_ids = {r["code"]: r["id"] for r in rows}
        days = sorted({(self.department_ids[i.department.code], i.service_date) for i in accepted})
        if days:
            keys = sorted({advisory_key("push", "department_day", d, day.isoformat()) for d, day in days})
            await db.execute(LOCK, keys)

        for cs in (*self.changing.values(), *self.replays.values()):
            self.groups.setdefault(cs.group, _Group()).sessions.append(cs)
        for item in accepted:
            self.groups.setdefault(
                (self.department_ids[item.department.code], item.service_date, item.resource_kind), _Group()
            )
        if days:
            read = [*self.changing, *self.replays]
            for r in await db.fetch(COUNTS, [d for d, _ in days], [day for _, day in days], read):
                group = self.groups.get((r["department_id"], r["service_date"], r["resource_kind"]))
                if group is not None:
                    senior = r["doctor_title"] in SENIOR_TITLES
                    live, held = r["live"], r["held"]
                    counted = Tally(live, live if senior else 0, held, held if senior else 0)
                    group.counted = _plus(group.counted, counted)
        measured = sorted({(d, day) for d, day, _ in self.groups})
        if measured:
            rows = await db.fetch(SHORTFALLS, [d for d, _ in measured], [day for _, day in measured])
            for r in rows:
                group = self.groups.get((r["department_id"], r["service_date"], r["resource_kind"]))
                if group is not None:
                    group.shortfalls[r["kind"]] = (r["required"], r["actual"])

    def _replay(self, item: SessionIn) -> bool:
        cs = self.found.get(item.external_id)
        return cs is not None and cs.id in self.replays

    def apply(self, n: int, item: SessionIn) -> SessionResult:
        """The item applied in memory, after every item before it: its result."""
        if n in self.errors:
            return _rejected(item, self.errors[n])
        cs = self.found.get(item.external_id)
        if cs is not None and cs.id in self.replays:
            outcome = "unchanged" if item.version == cs.version else "stale"
            group = self.groups.get(cs.group)
            return _result(cs, outcome, cs.version, self.department_codes[cs.department_id], group)
        policy = self.policies[(item.resource_kind, item.service_date)]
        assert policy is not None
        department_id = self.department_ids[item.department.code]
        group = self.groups[(department_id, item.service_date, item.resource_kind)]
        created = cs is None
        if cs is None:
            cs = _Session(
                id=None,
                external_id=item.external_id,
                version=item.version,
                department_id=department_id,
                service_date=item.service_date,
                resource_kind=item.resource_kind,
                status="active",
                doctor_title=None,
            )
            group.sessions.append(cs)
        cs.version = item.version
        cs.status = "active"
        cs.doctor_title = item.doctor.title if item.doctor else None
        cs.row = {
            "version": item.version,
            "department_id": department_id,
            "modality": item.modality,
            "ward_code": item.ward.code if item.ward else None,
            "ward_name": item.ward.name if item.ward else None,
            "doctor_id": self.doctor_ids[item.doctor.code] if item.doctor else None,
            "doctor_title": cs.doctor_title,
            "service_date": item.service_date,
            "period": item.period,
            "status": "active",
            "withdrawn_reason": None,
            "location": item.location,
            "policy_id": policy.id,
        }
        self._store_slots(cs, item, policy)
        selection = self._reserve(cs, item, policy, group)
        cs.changed()
        # R2–R5: the department-day's shortfalls as this item measured them.
        for kind, values in _measured(selection, lead_shortfall(item, policy, self.now)).items():
            if values is None:
                group.shortfalls.pop(kind, None)
            else:
                group.shortfalls[kind] = values
            self.touched[(department_id, item.service_date, item.resource_kind, kind)] = policy.id
        result = _result(cs, "created" if created else "updated", item.version, item.department.code, group)
        if created:
            self.created.append((cs, result))
        return result

    def _store_slots(self, cs: _Session, item: SessionIn, policy: Policy) -> None:
        """The session's slots as pushed; numbers no longer pushed are withdrawn."""
        public_at = item.public_at.astimezone(UTC)
        opens_at = pool_opens_at(public_at, policy)
        incoming = {s.number for s in item.slots}
        for number, slot in cs.slots.items():
            if number not in incoming:
                slot.status = "withdrawn"
        for new in item.slots:  # their instants are parsed to UTC (``UtcInstant``)
            stored = cs.slots.get(new.number)
            if stored is None:
                slot = _Slot(
                    self.next_key,
                    new.number,
                    "public",
                    new.external_id,
                    new.starts_at,
                    new.ends_at,
                    public_at,
                    opens_at,
                )
                self.next_key += 1
                cs.slots[new.number] = slot
                self.new_slots.append((cs, slot))
            else:
                if stored.status == "withdrawn":
                    stored.status = "public"
                stored.update(new.external_id, new.starts_at, new.ends_at, public_at, opens_at)

    def _reserve(self, cs: _Session, item: SessionIn, policy: Policy, group: _Group) -> Selection | None:
        """R1–R4 over the department-day of the session's kind: only this session's slots may be taken.

        An examination block never counts towards a department's outpatient target, nor the
        reverse. R4's senior share needs no special case: only outpatient policies may set one.
        """
        if policy.preferred_specialties and item.department.specialty not in policy.preferred_specialties:
            return None  # this department is outside the policy's reserving departments
        now = self.now
        marking = self.hospital.reservation_mode == "hospital"
        live = [s for s in cs.slots.values() if s.status != "withdrawn"]
        if marking:
            marks = {s.number: s.reserved for s in item.slots}
            for slot in live:
                mark = marks.get(slot.number)
                if mark and slot.status == "public" and slot.public_at > now:
                    slot.status = "reserved"
                elif mark is False and slot.status == "reserved":
                    slot.status = "public"
        senior = cs.doctor_title in SENIOR_TITLES
        own = [
            Candidate(
                s.key, s.starts_at, senior, s.status in POOL_HELD, s.status == "public" and s.public_at > now
            )
            for s in live
        ]
        measure = check_marked if marking else select_reserved
        selection = measure(
            own,
            ratio=policy.ratio,
            ratio_base=policy.ratio_base,
            min_senior_share=policy.min_senior_share,
            others=group.others(cs),
        )
        if selection.held:
            by_key = {s.key: s for s in live}
            for key in selection.held:
                if by_key[key].status == "public":
                    by_key[key].status = "reserved"
        return selection

    async def write(self) -> None:
        """Everything the run changed: a statement per table and kind of change."""
        db, hospital = self.db, self.hospital
        updated = [cs for cs in self.found.values() if cs.row is not None]
        await _write_sessions(db, hospital.id, self.now, updated, self.created)
        if self.new_slots:
            await db.copy(
                "slots",
                SLOT_COLUMNS,
                (
                    (cs.id, cs.resource_kind, hospital.id, s.number, s.external_id, s.starts_at, s.ends_at,
                     s.pool_opens_at, s.public_at, s.status)
                    for cs, s in self.new_slots
                ),
            )  # fmt: skip
        changed = [
            (s, bits)
            for cs in self.changing.values()
            for s in cs.slots.values()
            if s.stored_status is not None and (bits := s.row_changes())
        ]
        if changed:
            sql, arrays = update_slots(changed)
            await db.execute(sql, *arrays)
        unmet: list[tuple[ShortfallKey, int, int, int]] = []
        met: list[ShortfallKey] = []
        for shortfall, policy_id in self.touched.items():
            value = self.groups[shortfall[:3]].shortfalls.get(shortfall[3])
            if value is None:
                met.append(shortfall)
            else:
                unmet.append((shortfall, value[0], value[1], policy_id))
        await write_shortfalls(db, hospital_id=hospital.id, recorded_at=self.now, unmet=unmet, met=met)


async def _write_sessions(
    db: Driver,
    hospital_id: int,
    now: datetime,
    updated: list[_Session],
    created: list[tuple[_Session, SessionResult]],
) -> None:
    names = [c for c, _ in SESSION_COLUMNS]
    if created:
        rows = [(cs.external_id, *(cs.row[c] for c in names), cs.resource_kind) for cs, _ in created]  # type: ignore[index]
        ids = {
            r["external_id"]: r["id"]
            for r in await db.fetch(INSERT_SESSIONS, hospital_id, now, *_columns(rows, len(names) + 2))
        }
        for cs, result in created:
            cs.id = result.session_id = ids[cs.external_id]
    if updated:
        rows = [(cs.id, *(cs.row[c] for c in names)) for cs in updated]  # type: ignore[index]
        await db.execute(UPDATE_SESSIONS, hospital_id, now, *_columns(rows, len(names) + 1))


def forget_rows(session: AsyncSession) -> None:
    """Drop the ORM's copies of what was just written around it, so later loads read it afresh."""
    written = (ClinicSession, Slot, ReservationShortfall, Department, Doctor)
    for obj in list(session.identity_map.values()):
        if isinstance(obj, written):
            session.expunge(obj)
