"""Shortfalls: the rules a push could not meet, one row per department-day-kind (R2–R5)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.context import Actor
from service.kit.db import Driver
from service.kit.regions import within
from service.models.policy import Policy
from service.models.registry import Department, Organisation
from service.models.slots import ClinicSession, ReservationShortfall
from service.slots.reservation import Selection
from service.slots.schemas import ShortfallList, ShortfallRow


async def record_shortfalls(
    session: AsyncSession,
    actor: Actor,
    hospital: Organisation,
    department: Department,
    cs: ClinicSession,
    policy: Policy,
    selection: Selection | None,
    lead_short: tuple[int, int] | None = None,
) -> None:
    """Keep one row per unmet rule for the department-day-kind; delete rows that are met again."""
    measured: dict[str, tuple[int, int] | None] = {}
    if selection is not None:
        measured["ratio"] = (selection.target, selection.held_count) if selection.ratio_short else None
        measured["senior_share"] = (
            (selection.senior_target, selection.senior_held) if selection.senior_short else None
        )
    else:
        measured = {"ratio": None, "senior_share": None}
    if lead_short is not None:
        measured["lead_time"] = lead_short
    for kind, values in measured.items():
        key = {
            "department_id": department.id,
            "service_date": cs.service_date,
            "resource_kind": cs.resource_kind,
            "kind": kind,
        }
        if values is None:
            await session.execute(
                delete(ReservationShortfall).where(
                    *(getattr(ReservationShortfall, k) == v for k, v in key.items())
                )
            )
            continue
        required, actual = values
        stmt = insert(ReservationShortfall).values(
            **key,
            hospital_id=hospital.id,
            required=required,
            actual=actual,
            policy_id=policy.id,
            recorded_at=actor.now,
        )
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=["department_id", "service_date", "resource_kind", "kind"],
                set_={
                    "required": stmt.excluded.required,
                    "actual": stmt.excluded.actual,
                    "policy_id": stmt.excluded.policy_id,
                    "recorded_at": stmt.excluded.recorded_at,
                },
            )
        )


# A department-day-kind and a rule: (department_id, service_date, resource_kind, kind).
ShortfallKey = tuple[int, date, str, str]


async def write_shortfalls(
    driver: Driver,
    *,
    hospital_id: int,
    recorded_at: datetime,
    unmet: Sequence[tuple[ShortfallKey, int, int, int]],
    met: Sequence[ShortfallKey],
) -> None:
    """``record_shortfalls`` for many department-days at once: a push's outcome in two statements.

    ``unmet``: (key, required, actual, policy_id) of the rules now unmet; ``met``: the rules met
    again (their rows, if any, go).
    """
    if met:
        await driver.execute(
            """
            DELETE FROM reservation_shortfalls r
             USING unnest($1::bigint[], $2::date[], $3::text[], $4::text[]) AS m(d, day, rk, kind)
             WHERE (r.department_id, r.service_date, r.resource_kind, r.kind) = (m.d, m.day, m.rk, m.kind)
            """,
            *(list(column) for column in zip(*met, strict=True)),
        )
    if unmet:
        keys = [key for key, *_ in unmet]
        await driver.execute(
            """
            INSERT INTO reservation_shortfalls AS r
                   (department_id, service_date, resource_kind, kind, hospital_id, required, actual,
                    policy_id, recorded_at)
            SELECT d, day, rk, kind, $5, required, actual, policy_id, $9
              FROM unnest($1::bigint[], $2::date[], $3::text[], $4::text[], $6::int[], $7::int[],
                          $8::bigint[]) AS u(d, day, rk, kind, required, actual, policy_id)
            ON CONFLICT (department_id, service_date, resource_kind, kind) DO UPDATE SET
                required = excluded.required, actual = excluded.actual,
                policy_id = excluded.policy_id, recorded_at = excluded.recorded_at
            """,
            *(list(column) for column in zip(*keys, strict=True)),
            hospital_id,
            [required for _, required, _, _ in unmet],
            [actual for _, _, actual, _ in unmet],
            [policy_id for *_, policy_id in unmet],
            recorded_at,
        )


async def forget_shortfalls(session: AsyncSession, cs: ClinicSession) -> None:
    """As a withdrawal does, drop the department-day's measured shortfalls; with no session left, all."""
    others = await session.scalar(
        select(func.count()).where(
            ClinicSession.department_id == cs.department_id,
            ClinicSession.service_date == cs.service_date,
            ClinicSession.resource_kind == cs.resource_kind,
            ClinicSession.status == "active",
        )
    )
    kinds = ("ratio", "senior_share") if others else ("ratio", "senior_share", "lead_time")
    await session.execute(
        delete(ReservationShortfall).where(
            ReservationShortfall.department_id == cs.department_id,
            ReservationShortfall.service_date == cs.service_date,
            ReservationShortfall.resource_kind == cs.resource_kind,
            ReservationShortfall.kind.in_(kinds),
        )
    )


async def list_shortfalls(
    *,
    session: AsyncSession,
    date_from: date | None,
    date_to: date | None,
    hospital_id: int | None = None,
    region_code: str | None = None,
) -> ShortfallList:
    """Unmet rules per department and day: of one hospital (``hospital_id``), of the hospitals
    of a region (``region_code``), or of one hospital if it lies in the region (both)."""
    stmt = (
        select(ReservationShortfall, Department, Policy)
        .join(Department, Department.id == ReservationShortfall.department_id)
        .join(Policy, Policy.id == ReservationShortfall.policy_id)
        .order_by(
            ReservationShortfall.service_date,
            Department.code,
            ReservationShortfall.resource_kind,
            ReservationShortfall.kind,
        )
    )
    if region_code is not None:
        stmt = stmt.join(Organisation, Organisation.id == ReservationShortfall.hospital_id).where(
            Organisation.kind == "hospital", within(Organisation.region_code, region_code)
        )
    if hospital_id is not None:
        stmt = stmt.where(ReservationShortfall.hospital_id == hospital_id)
    if date_from is not None:
        stmt = stmt.where(ReservationShortfall.service_date >= date_from)
    if date_to is not None:
        stmt = stmt.where(ReservationShortfall.service_date <= date_to)
    rows = (await session.execute(stmt.limit(5000))).all()
    return ShortfallList(
        items=[
            ShortfallRow(
                hospital_id=sf.hospital_id,
                department_code=dept.code,
                department_name=dept.name,
                service_date=sf.service_date,
                resource_kind=sf.resource_kind,
                kind=sf.kind,
                required=sf.required,
                actual=sf.actual,
                policy_code=policy.code,
                policy_version=policy.version,
                recorded_at=sf.recorded_at,
            )
            for sf, dept, policy in rows
        ]
    )
