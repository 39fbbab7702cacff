"""A family doctor's slot search costs the same statements however many hospitals the region holds.

The pools in scope and the policies in force come from one query each for all hospitals,
and the page's policies from one query per service date on it (R7, R18), instead of one
policy query per hospital and kind.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from sqlalchemy import insert, select

from service.kit.clock import local_datetime
from service.kit.db import Database
from service.models.policy import HospitalPolicy
from service.models.registry import Organisation
from tests.factories import pool_slots, push, session_item
from tests.test_referral_views import counting

DAY = date(2026, 3, 21)


async def add_hospitals(db: Database, count: int, now: Any) -> None:
    """``count`` more city hospitals, each with the city hospital's outpatient policy and no slots."""

    async def work(session: Any) -> None:
        code = await session.scalar(
            select(HospitalPolicy.policy_code)
            .join(Organisation, Organisation.id == HospitalPolicy.hospital_id)
            .where(Organisation.code == "H-CITY", HospitalPolicy.resource_kind == "outpatient")
        )
        ids = await session.scalars(
            insert(Organisation)
            .values(
                [
                    {
                        "code": f"H-EXTRA-{i}",
                        "name": f"合肥市第{i}医院",
                        "kind": "hospital",
                        "region_code": "340104",
                        "hospital_level": 3,
                        "hospital_tier": "city",
                    }
                    for i in range(count)
                ]
            )
            .returning(Organisation.id)
        )
        await session.execute(
            insert(HospitalPolicy).values(
                [
                    {"hospital_id": i, "resource_kind": "outpatient", "policy_code": code, "assigned_at": now}
                    for i in ids
                ]
            )
        )

    await db.run(work)


async def test_r7_search_statements_do_not_grow_with_the_hospitals_of_the_region(app, client, world, db):
    world.clock.set(local_datetime(DAY - timedelta(days=8), 9))
    await push(client, world, [session_item("S-SEARCH", DAY, slots=10)])

    with counting(app) as few:
        before = await pool_slots(client, world, limit=20)
    await add_hospitals(db, 100, world.clock.now())
    with counting(app) as many:
        after = await pool_slots(client, world, limit=20)

    assert before and [s["slot_id"] for s in after] == [s["slot_id"] for s in before]
    assert len(many) == len(few), (len(few), len(many))
    assert len(few) <= 10, few
