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

# ``offered``: held for a waiting-list offer (docs/waitlist.md), as fixed as a booked slot.
POOL_HELD = frozenset(("reserved", "offered", "booked", "returned"))
POOL_LISTED = frozenset(("reserved", "offered", "booked"))  # what a result lists as held for the pool
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
    opened: bool = False  # stored, and its pool window had opened when the push came (R5)

    @property
    def fresh(self) -> bool:
        """New to the pool: not stored yet, or stored withdrawn and pushed again."""
        return self.stored_status is None or self.stored_status == "withdrawn"

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

    @property
    def group(self) -> GroupKey:
        return (self.department_id, self.service_date, self.resource_kind)

    def pool(self) -> list[_Slot]:
        """Its slots held for the pool (reserved or booked), by number."""
        return sorted((s for s in self.slots.values() if s.status in POOL_LISTED), key=_NUMBER)

    def stored_pool(self) -> frozenset[int]:
        """The numbers of its slots the pool held as read."""
        return frozenset(s.number for s in self.slots.values() if s.stored_status in POOL_LISTED)


@dataclass(eq=False)
class _Group:
    """A department-day of one kind: the sessions the run's items name, read slot by slot; the
    slots of its other sessions that a re-selection may move, read too; the rest counted."""

    sessions: list[_Session] = field(default_factory=list)
    movable: list[tuple[_Session, _Slot]] = field(default_factory=list)
    counted: Tally = NO_OTHERS  # the other sessions' slots no selection may take or drop
    shortfalls: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (required, actual)
    touched: bool = False  # re-selected by this run: an item changed it, or a withdrawal did
    lead: tuple[int, int] | None = None  # R5, as the run's last late item measured it


@dataclass(frozen=True)
class PoolChange:
    """A session whose pool slots a run moved, though no item of the run created or updated it."""

    session_id: int
    external_id: str
    group: GroupKey
    department_code: str
    before: frozenset[int]  # its pool slot numbers as the run read them
    after: tuple[tuple[int, int], ...]  # (number, id) of its pool slots as the run left them


@dataclass(frozen=True)
class RunOutcome:
    results: list[SessionResult]
    changes: list[PoolChange]


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
    booked = sorted((number, old) for number, old in current.items() if old.status in ("booked", "offered"))
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
                    detail="This slot has a pool referral (or is held for one, offered from the waiting "
                    "list); it cannot be removed or moved. "
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
    cs: _Session,
    outcome: str,
    version: int,
    department_code: str,
    group: _Group | None,
    ids: dict[int, int],
) -> SessionResult:
    live = sorted((s for s in cs.slots.values() if s.status != "withdrawn"), key=_NUMBER)
    pool = [s for s in live if s.status in POOL_LISTED]
    # In the table's key order, by rule, as a read of the department-day's rows by its key returns them.
    shortfalls = sorted((group.shortfalls if group else {}).items())
    return SessionResult(
        external_id=cs.external_id,
        session_id=cs.id,
        result=outcome,
        version=version,
        pool_slot_numbers=[s.number for s in pool],
        pool_slot_ids=[ids.get(s.key, s.key) for s in pool],
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
DEPARTMENTS = """
SELECT id, code, specialty FROM departments
 WHERE hospital_id = $1 AND (code = ANY($2::text[]) OR id = ANY($3::bigint[]))
"""
SLOTS = """
SELECT id, session_id, number, status, external_id, starts_at, ends_at, public_at, pool_opens_at
  FROM slots WHERE session_id = ANY($1::bigint[]) ORDER BY id
"""
# The department-days' other active sessions. Their slots whose pool window has not opened (and
# which are therefore not booked) may be moved by the re-selection: read one by one and locked, so
# that a booking at the window's opening waits for the push and then sees what it decided. The
# rest (window open, booked, released) no selection may move: only counted, never locked, so
# bookings on open days do not wait on a push. ``pool_opens_at > now`` implies ``public_at > now``
# (R5's constraint).
MOVABLE = """
SELECT s.id, s.session_id, s.number, s.status, s.external_id, s.starts_at, s.ends_at, s.public_at,
       s.pool_opens_at, cs.external_id AS session_external_id, cs.version, cs.department_id,
       cs.service_date, cs.resource_kind, cs.doctor_title
  FROM clinic_sessions cs JOIN slots s ON s.session_id = cs.id
 WHERE (cs.department_id, cs.service_date, cs.resource_kind)
       IN (SELECT * FROM unnest($1::bigint[], $2::date[], $3::text[]))
   AND cs.status = 'active' AND cs.id <> ALL($4::bigint[])
   AND s.status IN ('public', 'reserved') AND s.pool_opens_at > $5
 ORDER BY s.id
   FOR UPDATE OF s
"""
COUNTS = """
SELECT cs.department_id, cs.service_date, cs.resource_kind, cs.doctor_title,
       count(*) AS live, count(*) FILTER (WHERE s.status IN ('reserved', 'offered', 'booked', 'returned')) AS held
  FROM clinic_sessions cs JOIN slots s ON s.session_id = cs.id
 WHERE (cs.department_id, cs.service_date, cs.resource_kind)
       IN (SELECT * FROM unnest($1::bigint[], $2::date[], $3::text[]))
   AND cs.status = 'active' AND cs.id <> ALL($4::bigint[])
   AND s.status <> 'withdrawn' AND NOT (s.status IN ('public', 'reserved') AND s.pool_opens_at > $5)
 GROUP BY cs.id
"""
# The ids COPY gave the new slots the pool now holds.
NEW_POOL_IDS = """
SELECT s.id, s.session_id, s.number
  FROM slots s JOIN unnest($1::bigint[], $2::int[]) AS u(session_id, number)
    ON s.session_id = u.session_id AND s.number = u.number
"""
SHORTFALLS = """
SELECT department_id, service_date, resource_kind, kind, required, actual
  FROM reservation_shortfalls
 WHERE (department_id, service_date) IN (SELECT * FROM unnest($1::bigint[], $2::date[]))
"""


async def _read_slots(db: Driver, sessions: dict[int, _Session], now: datetime, *, lock: bool) -> None:
    if not sessions:
        return
    rows = await db.fetch(SLOTS + (" FOR UPDATE" if lock else ""), list(sessions))
    for r in rows:
        sessions[r[1]].slots[r[2]] = _Slot(
            r[0], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[3], 0, r[8] <= now
        )


# --- writing -------------------------------------------------------------------------------------

UPSERT_DEPARTMENTS = """
INSERT INTO departments (hospital_id, code, name, specialty)
SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[])
ON CONFLICT (hospital_id, code) DO UPDATE SET name = excluded.name, specialty = excluded.specialty
RETURNING id, code, specialty
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
    reselect: Sequence[GroupKey] = (),
) -> RunOutcome:
    """Apply validated active items, each session at most once, as if one by one in order; then
    re-select each department-day they touch, and those of ``reselect`` (withdrawals), once."""
    assert len({i.external_id for i in items}) == len(items)
    run = _Run(await driver(session), hospital, actor.now.astimezone(UTC), items, reselect)
    await run.decide(session)
    await run.prepare()
    for n, item in enumerate(items):
        run.apply(n, item)
    for key, group in run.groups.items():
        if group.touched:
            run.reselect(key, group)
    await run.write()
    forget_rows(session)
    return RunOutcome(results=[run.result(n, item) for n, item in enumerate(items)], changes=run.changes())


class _Run:
    """One run of a push: what it read, what it decided, and what it will write."""

    def __init__(
        self,
        db: Driver,
        hospital: Organisation,
        now: datetime,
        items: Sequence[SessionIn],
        reselect: Sequence[GroupKey],
    ) -> None:
        self.db = db
        self.hospital = hospital
        self.now = now
        self.items = items
        self.reselect_groups = reselect
        self.found: dict[str, _Session] = {}  # the stored sessions the items name, by HIS ID
        self.replays: dict[int, _Session] = {}  # by id: the sessions of unchanged or stale items
        self.changing: dict[int, _Session] = {}  # by id: the stored sessions the items may change
        self.others: dict[int, _Session] = {}  # by id: the days' other sessions with movable slots
        self.errors: dict[int, list[ItemError]] = {}  # the refused items, by position
        self.outcomes: dict[int, tuple[_Session, str]] = {}  # the accepted items: session, result
        self.policies: dict[tuple[str, date], Policy | None] = {}
        self.department_ids: dict[str, int] = {}
        self.department_codes: dict[int, str] = {}
        self.specialties: dict[int, str | None] = {}
        self.doctor_ids: dict[str, int] = {}
        self.groups: dict[GroupKey, _Group] = {}
        self.created: list[_Session] = []
        self.new_slots: list[tuple[_Session, _Slot]] = []
        self.new_ids: dict[int, int] = {}  # key of a new slot the pool holds -> the id COPY gave it
        self.touched: dict[ShortfallKey, int] = {}  # a shortfall measured -> the policy that measured it
        self.next_key = NEW_KEYS

    async def decide(self, session: AsyncSession) -> None:
        """Read the sessions, departments, policies and slots, and decide every refusal."""
        db, hospital, items = self.db, self.hospital, self.items
        if items:
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
            wanted={(items[n].resource_kind, items[n].service_date) for n in candidates}
            | {(kind, day) for _, day, kind in self.reselect_groups},
        )
        rows = await db.fetch(
            DEPARTMENTS,
            hospital.id,
            [items[n].department.code for n in candidates],
            [cs.department_id for cs in self.found.values()] + [d for d, _, _ in self.reselect_groups],
        )
        self.department_ids = {r["code"]: r["id"] for r in rows}
        self.specialties = {r["id"]: r["specialty"] for r in rows}
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
        await _read_slots(db, self.changing, self.now, lock=True)
        await _read_slots(db, self.replays, self.now, lock=False)
        for n in candidates:
            cs = self.found.get(items[n].external_id)
            if n not in self.errors and cs is not None:
                booked = _booked_changes(cs.slots, items[n])
                if booked:
                    self.errors[n] = booked

    async def prepare(self) -> None:
        """Upsert the accepted items' departments and doctors (the last item's names win), lock their
        department-days in key order, and read the days' other sessions and shortfalls."""
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
            self.specialties.update((r["id"], r["specialty"]) for r in rows)
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
        touched = {
            (self.department_ids[i.department.code], i.service_date, i.resource_kind) for i in accepted
        } | {g for g in self.reselect_groups if self.policies.get((g[2], g[1])) is not None}
        days = sorted({(d, day) for d, day, _ in touched})
        if days:
            keys = sorted({advisory_key("push", "department_day", d, day.isoformat()) for d, day in days})
            await db.execute(LOCK, keys)

        # Every session an item names and the run read (changing, or rejected once read) belongs
        # to its day's group; replays do not: the re-selection reads them as the day's others.
        for cs in self.changing.values():
            self.groups.setdefault(cs.group, _Group()).sessions.append(cs)
        for cs in self.replays.values():
            self.groups.setdefault(cs.group, _Group())
        for key in touched:
            self.groups.setdefault(key, _Group()).touched = True
        if touched:
            ordered = sorted(touched)
            arrays = ([d for d, _, _ in ordered], [day for _, day, _ in ordered], [k for _, _, k in ordered])
            read = list(self.changing)
            for r in await db.fetch(MOVABLE, *arrays, read, self.now):
                self._movable(r)
            for r in await db.fetch(COUNTS, *arrays, read, self.now):
                group = self.groups[(r["department_id"], r["service_date"], r["resource_kind"])]
                senior = r["doctor_title"] in SENIOR_TITLES
                live, held = r["live"], r["held"]
                c = group.counted
                group.counted = Tally(
                    c.slots + live,
                    c.senior_slots + (live if senior else 0),
                    c.held + held,
                    c.senior_held + (held if senior else 0),
                )
        measured = sorted({(d, day) for d, day, _ in self.groups})
        if measured:
            rows = await db.fetch(SHORTFALLS, [d for d, _ in measured], [day for _, day in measured])
            for r in rows:
                day_group = self.groups.get((r["department_id"], r["service_date"], r["resource_kind"]))
                if day_group is not None:
                    day_group.shortfalls[r["kind"]] = (r["required"], r["actual"])

    def _movable(self, r: Any) -> None:
        """A slot of another session of a touched day that the re-selection may move."""
        cs = self.replays.get(r["session_id"]) or self.others.get(r["session_id"])
        if cs is None:
            cs = self.others[r["session_id"]] = _Session(
                id=r["session_id"],
                external_id=r["session_external_id"],
                version=r["version"],
                department_id=r["department_id"],
                service_date=r["service_date"],
                resource_kind=r["resource_kind"],
                status="active",
                doctor_title=r["doctor_title"],
            )
        # A replay's slots were read unlocked: this read, under the lock, replaces them.
        slot = _Slot(r["id"], r["number"], r["status"], r["external_id"], r["starts_at"], r["ends_at"],
                     r["public_at"], r["pool_opens_at"], r["status"])  # fmt: skip
        cs.slots[slot.number] = slot
        self.groups[cs.group].movable.append((cs, slot))

    def _replay(self, item: SessionIn) -> bool:
        cs = self.found.get(item.external_id)
        return cs is not None and cs.id in self.replays

    def apply(self, n: int, item: SessionIn) -> None:
        """The item applied in memory, after every item before it (its reservation comes later)."""
        if n in self.errors or self._replay(item):
            return
        cs = self.found.get(item.external_id)
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
            self.created.append(cs)
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
        if self.hospital.reservation_mode == "hospital":
            self._mark(cs, item)
        lead = lead_shortfall(item, policy, self.now)
        if lead is not None:
            group.lead = lead
        self.outcomes[n] = (cs, "created" if created else "updated")

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

    def _mark(self, cs: _Session, item: SessionIn) -> None:
        """A hospital that marks its own pool slots: the marks taken as pushed, never changed."""
        marks = {s.number: s.reserved for s in item.slots}
        for slot in cs.slots.values():
            mark = marks.get(slot.number)
            if mark and slot.status == "public" and slot.public_at > self.now:
                slot.status = "reserved"
            elif mark is False and slot.status == "reserved":
                slot.status = "public"

    def _candidate(self, cs: _Session, slot: _Slot, senior: bool, marking: bool) -> tuple[Candidate, bool]:
        """The slot as the selection sees it, and whether the selection decides its status.

        Before its pool window opens, a slot not booked is the selection's to take or leave,
        whatever it was before: that is what makes the day's reservation one decision. Once the
        window has opened (or the slot is booked or released) it stays as it is; a slot new to
        the pool may still be taken to top the day up while its release is ahead.
        """
        tiebreak = (cs.external_id, slot.number)
        status = slot.status
        if marking or status in ("booked", "offered", "returned"):
            return Candidate(slot.key, slot.starts_at, senior, status in POOL_HELD, False, tiebreak), False
        if slot.public_at <= self.now or (slot.opened and not slot.fresh):
            return Candidate(slot.key, slot.starts_at, senior, status == "reserved", False, tiebreak), False
        return Candidate(slot.key, slot.starts_at, senior, False, True, tiebreak), True

    def reselect(self, key: GroupKey, group: _Group) -> None:
        """R1–R4 over the department-day of one kind, all its slots at once; then its shortfalls.

        An examination block never counts towards a department's outpatient target, nor the
        reverse. R4's senior share needs no special case: only outpatient policies may set one.
        """
        department_id, day, kind = key
        policy = self.policies.get((kind, day))
        if policy is None:
            return
        selection: Selection | None = None
        specialty = self.specialties.get(department_id)
        # A department outside the policy's reserving departments (R10) reserves nothing.
        if not policy.preferred_specialties or specialty in policy.preferred_specialties:
            marking = self.hospital.reservation_mode == "hospital"
            candidates: list[Candidate] = []
            decided: dict[int, _Slot] = {}
            members = [(cs, s) for cs in group.sessions if cs.status == "active" for s in cs.slots.values()]
            for cs, slot in (*members, *group.movable):
                if slot.status == "withdrawn":
                    continue
                candidate, moves = self._candidate(cs, slot, cs.doctor_title in SENIOR_TITLES, marking)
                candidates.append(candidate)
                if moves:
                    decided[slot.key] = slot
            measure = check_marked if marking else select_reserved
            selection = measure(
                candidates,
                ratio=policy.ratio,
                ratio_base=policy.ratio_base,
                min_senior_share=policy.min_senior_share,
                others=group.counted,
            )
            for slot_key, slot in decided.items():
                slot.status = "reserved" if slot_key in selection.held else "public"
        # R2–R5: the department-day's shortfalls as measured now.
        for rule, values in _measured(selection, group.lead).items():
            if values is None:
                group.shortfalls.pop(rule, None)
            else:
                group.shortfalls[rule] = values
            self.touched[(department_id, day, kind, rule)] = policy.id

    async def write(self) -> None:
        """Everything the run changed: a statement per table and kind of change."""
        db, hospital = self.db, self.hospital
        updated = [cs for cs in self.found.values() if cs.row is not None and cs.id is not None]
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
            pooled = [(cs.id, s) for cs, s in self.new_slots if s.status in POOL_LISTED]
            if pooled:
                rows = await db.fetch(NEW_POOL_IDS, [i for i, _ in pooled], [s.number for _, s in pooled])
                by_place = {(r["session_id"], r["number"]): r["id"] for r in rows}
                self.new_ids = {s.key: by_place[(i, s.number)] for i, s in pooled}
        changed = [
            (s, bits)
            for cs in (*self.changing.values(), *self.replays.values(), *self.others.values())
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

    def result(self, n: int, item: SessionIn) -> SessionResult:
        """The item's result, with its session's pool slots and day's shortfalls as the run left them."""
        if n in self.errors:
            return _rejected(item, self.errors[n])
        if n in self.outcomes:
            cs, outcome = self.outcomes[n]
            code = item.department.code
            version = item.version
        else:  # unchanged or stale
            cs = self.found[item.external_id]
            outcome = "unchanged" if item.version == cs.version else "stale"
            code, version = self.department_codes[cs.department_id], cs.version
        return _result(cs, outcome, version, code, self.groups.get(cs.group), self.new_ids)

    def changes(self) -> list[PoolChange]:
        """The sessions whose pool slots moved though no item of the run created or updated them."""
        updated = {cs.id for cs, _ in self.outcomes.values()}
        seen = {*self.changing.values(), *self.replays.values(), *self.others.values()}
        out: list[PoolChange] = []
        for cs in sorted(seen, key=lambda c: c.id or 0):
            if cs.id is None or cs.id in updated:
                continue
            before = cs.stored_pool()
            pool = cs.pool()
            if before != {s.number for s in pool}:
                out.append(
                    PoolChange(
                        session_id=cs.id,
                        external_id=cs.external_id,
                        group=cs.group,
                        department_code=self.department_codes[cs.department_id],
                        before=before,
                        after=tuple((s.number, s.key) for s in pool),
                    )
                )
        return out


async def _write_sessions(
    db: Driver,
    hospital_id: int,
    now: datetime,
    updated: list[_Session],
    created: list[_Session],
) -> None:
    names = [c for c, _ in SESSION_COLUMNS]
    if created:
        rows = [(cs.external_id, *(cs.row[c] for c in names), cs.resource_kind) for cs in created]  # type: ignore[index]
        ids = {
            r["external_id"]: r["id"]
            for r in await db.fetch(INSERT_SESSIONS, hospital_id, now, *_columns(rows, len(names) + 2))
        }
        for cs in created:
            cs.id = ids[cs.external_id]
    if updated:
        rows = [(cs.id, *(cs.row[c] for c in names)) for cs in updated]  # type: ignore[index]
        await db.execute(UPDATE_SESSIONS, hospital_id, now, *_columns(rows, len(names) + 1))


def forget_rows(session: AsyncSession) -> None:
    """Drop the ORM's copies of what was just written around it, so later loads read it afresh."""
    written = (ClinicSession, Slot, ReservationShortfall, Department, Doctor)
    for obj in list(session.identity_map.values()):
        if isinstance(obj, written):
            session.expunge(obj)


FINAL_POOLS = """
SELECT session_id, number, id FROM slots
 WHERE session_id = ANY($1::bigint[]) AND status IN ('reserved', 'offered', 'booked')
 ORDER BY session_id, number
"""
FINAL_SHORTFALLS = """
SELECT cs.id AS session_id, d.code, r.service_date, r.resource_kind, r.kind, r.required, r.actual
  FROM clinic_sessions cs
  JOIN reservation_shortfalls r
    ON (r.department_id, r.service_date, r.resource_kind) = (cs.department_id, cs.service_date, cs.resource_kind)
  JOIN departments d ON d.id = cs.department_id
 WHERE cs.id = ANY($1::bigint[])
 ORDER BY cs.id, r.kind
"""


async def final_results(session: AsyncSession, results: Sequence[SessionResult]) -> None:
    """Give each result its session's pool slots and its day's shortfalls as the whole push left
    them: for a push applied in several runs, where a later run may re-select an earlier one's day."""
    kept = [r for r in results if r.session_id is not None and r.result != "rejected"]
    ids = sorted({r.session_id for r in kept if r.session_id is not None})
    if not ids:
        return
    db = await driver(session)
    pools: dict[int, list[tuple[int, int]]] = {}
    for row in await db.fetch(FINAL_POOLS, ids):
        pools.setdefault(row["session_id"], []).append((row["number"], row["id"]))
    shortfalls: dict[int, list[ShortfallOut]] = {}
    for row in await db.fetch(FINAL_SHORTFALLS, ids):
        shortfalls.setdefault(row["session_id"], []).append(
            ShortfallOut(
                department_code=row["code"],
                service_date=row["service_date"],
                resource_kind=row["resource_kind"],
                kind=row["kind"],
                required=row["required"],
                actual=row["actual"],
            )
        )
    for result in kept:
        assert result.session_id is not None
        pool = pools.get(result.session_id, [])
        result.pool_slot_numbers = [number for number, _ in pool]
        result.pool_slot_ids = [slot_id for _, slot_id in pool]
        result.shortfalls = shortfalls.get(result.session_id, [])
