"""Plain async factories: a small region, its organisations, policies, keys and pushes.

Every resident ID here is synthetic: generated with a valid check character
from a region code, a birth date and a sequence number.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import text

from service.kit.clock import SHANGHAI, Clock, ManualClock, local_datetime
from service.kit.context import Actor
from service.kit.crypto import Crypto
from service.kit.db import Database
from service.policy.presets import CHRONIC_DISEASES, DEFAULT_NO_SHOW
from service.policy.service import assign_policy, install_presets, publish_policy
from service.registry.schemas import AllianceIn, OrganisationIn, RegionIn
from service.registry.service import create_alliance, create_api_client, create_organisation, upsert_regions
from service.residents.idnumber import check_char

REGIONS = [
    RegionIn(code="340000", name="安徽省", level="province"),
    RegionIn(code="340100", name="合肥市", level="city", parent_code="340000"),
    RegionIn(code="340102", name="瑶海区", level="county", parent_code="340100"),
    RegionIn(code="340104", name="蜀山区", level="county", parent_code="340100"),
    RegionIn(code="340200", name="芜湖市", level="city", parent_code="340000"),
    RegionIn(code="340202", name="镜湖区", level="county", parent_code="340200"),
]


def synthetic_id(region: str = "340104", born: date = date(1958, 4, 12), seq: int = 1) -> str:
    first17 = f"{region}{born:%Y%m%d}{seq % 1000:03d}"
    return first17 + check_char(first17)


TEST_POLICY: dict[str, Any] = {
    "code": "test-city",
    "name": "test: 20 % of outpatient slots, half senior, city-wide",
    "effective_from": date(2024, 1, 1),
    "ratio": Decimal("0.20"),
    "ratio_base": "all_outpatient",
    "min_senior_share": Decimal("0.50"),
    "lead_minutes": 24 * 60,
    "scope": "city",
    "disease_prefixes": CHRONIC_DISEASES,
    "preferred_specialties": [],
    "consultation_max_age_hours": 72,
    "cancel_cutoff_minutes": 120,
    "cancel_hotline": "12320",
    "no_show_rule": DEFAULT_NO_SHOW,
}


@dataclass
class World:
    clock: ManualClock
    db: Database
    ids: dict[str, int] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}


ORGS = {
    "city_hospital": OrganisationIn(
        code="H-CITY", name="合肥市第一人民医院", kind="hospital", region_code="340104",
        hospital_level=3, hospital_tier="city",
    ),
    "district_hospital": OrganisationIn(
        code="H-DIST", name="瑶海区人民医院", kind="hospital", region_code="340102",
        hospital_level=2, hospital_tier="county",
    ),
    "provincial_hospital": OrganisationIn(
        code="H-PROV", name="安徽省立医院", kind="hospital", region_code="340104",
        hospital_level=3, hospital_tier="provincial",
    ),
    "chc_a": OrganisationIn(
        code="P-A", name="瑶海区明光路社区卫生服务中心", kind="primary", region_code="340102",
        primary_kind="community",
    ),
    "chc_b": OrganisationIn(
        code="P-B", name="蜀山区三里庵社区卫生服务中心", kind="primary", region_code="340104",
        primary_kind="community",
    ),
    "chc_far": OrganisationIn(
        code="P-FAR", name="镜湖区滨江社区卫生服务中心", kind="primary", region_code="340202",
        primary_kind="community",
    ),
    "commission": OrganisationIn(code="A-COMM", name="安徽省卫生健康委", kind="authority", region_code="340000"),
    "hotline": OrganisationIn(code="A-HOT", name="合肥市健共体服务热线", kind="authority", region_code="340100"),
    "platform": OrganisationIn(code="A-PLAT", name="合肥市预约诊疗平台", kind="authority", region_code="340100"),
}  # fmt: skip

KEYS = {
    "city_hospital": ("city_hospital", "hospital"),
    "district_hospital": ("district_hospital", "hospital"),
    "provincial_hospital": ("provincial_hospital", "hospital"),
    "chc_a": ("chc_a", "primary"),
    "chc_b": ("chc_b", "primary"),
    "chc_far": ("chc_far", "primary"),
    "district_as_booker": ("district_hospital", "primary"),
    "commission": ("commission", "commission"),
    "hotline": ("hotline", "hotline"),
    "platform": ("platform", "platform"),
}


async def build_world(db: Database, crypto: Crypto, clock: ManualClock) -> World:
    world = World(clock=clock, db=db)
    actor = Actor.system("test", now=clock.now())

    async def work(session: Any) -> None:
        await upsert_regions(session=session, actor=actor, regions=REGIONS)
        for name, org in ORGS.items():
            world.ids[name] = (await create_organisation(session=session, actor=actor, org=org)).id
        await install_presets(session=session, actor=actor)
        await publish_policy(session=session, actor=actor, fields=dict(TEST_POLICY), area="340000")
        await assign_policy(
            session=session, actor=actor, hospital_id=world.ids["city_hospital"], policy_code="test-city"
        )
        await assign_policy(
            session=session, actor=actor, hospital_id=world.ids["district_hospital"], policy_code="fuzhou"
        )
        await assign_policy(
            session=session,
            actor=actor,
            hospital_id=world.ids["provincial_hospital"],
            policy_code="anhui-provincial",
        )
        for key_name, (org_name, role) in KEYS.items():
            _, token = await create_api_client(
                session=session,
                actor=actor,
                crypto=crypto,
                organisation_id=world.ids[org_name],
                role=role,
                name=key_name,
            )
            world.keys[key_name] = token

    await db.run(work)
    return world


async def until_a_session_waits_on_a_lock(db: Database) -> None:
    """Return as soon as some session of this database waits for a lock; fail after 10 s.

    For races: a test holding a lock starts a request that must queue behind it, and waits for
    the request to be seen queueing (rather than sleeping and hoping it got that far).
    """
    query = text(
        "SELECT EXISTS (SELECT FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock')"
    )
    async with asyncio.timeout(10):
        while not await db.run(lambda s: s.scalar(query)):  # noqa: ASYNC110 (PostgreSQL sends no event)
            await asyncio.sleep(0.01)


async def add_alliance(db: Database, lead_code: str, members: list[str]) -> None:
    # Set up by the operator: when is of no consequence, so the audit entry takes START's date.
    await db.run(
        lambda s: create_alliance(
            session=s,
            actor=Actor.system("test", now=datetime(2026, 3, 2, 9, 0, tzinfo=SHANGHAI)),
            alliance=AllianceIn(name="test alliance", lead_hospital_code=lead_code, member_codes=members),
        )
    )


def session_item(
    external_id: str,
    day: date,
    *,
    title: str = "associate_chief",
    doctor_code: str | None = None,
    department: str = "CARD",
    specialty: str | None = "cardiology",
    period: str = "morning",
    slots: int = 10,
    first_hour: int = 8,
    minutes: int = 15,
    public_at: datetime | None = None,
    version: int = 1,
    reserved: list[int] | None = None,
) -> dict[str, Any]:
    """One session push item; by default public release is 7 days before, at 08:00."""
    start = local_datetime(day, first_hour if period == "morning" else first_hour + 6)
    release = public_at or local_datetime(day - timedelta(days=7), 8)
    return {
        "external_id": external_id,
        "version": version,
        "department": {"code": department, "name": "心血管内科", "specialty": specialty},
        "doctor": {"code": doctor_code or f"D-{title}", "name": "王医生", "title": title},
        "service_date": day.isoformat(),
        "period": period,
        "public_at": release.isoformat(),
        "slots": [
            {
                "number": i + 1,
                "external_id": f"{external_id}-{i + 1}",
                "starts_at": (start + timedelta(minutes=minutes * i)).isoformat(),
                "ends_at": (start + timedelta(minutes=minutes * (i + 1))).isoformat(),
                **({"reserved": (i + 1) in reserved} if reserved is not None else {}),
            }
            for i in range(slots)
        ],
    }


def contract_row(
    seq: int,
    *,
    institution: str = "P-A",
    doctor_code: str = "FD-1",
    region: str = "340102",
    starts_on: date = date(2025, 1, 1),
    ends_on: date = date(2026, 12, 31),
    name: str | None = None,
) -> dict[str, Any]:
    return {
        "contract_no": f"C-{institution}-{seq}",
        "institution_code": institution,
        "family_doctor": {"code": doctor_code, "name": "李家庭", "title": "attending"},
        "resident": {"id_number": synthetic_id(region, seq=seq), "name": name or f"张{seq}"},
        "starts_on": starts_on.isoformat(),
        "ends_on": ends_on.isoformat(),
    }


def booking(slot_id: int, seq: int, *, clock: Clock, doctor_code: str = "FD-1", region: str = "340102",
            diagnoses: list[str] | None = None, name: str | None = None,
            encountered_at: datetime | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "slot_id": slot_id,
        "referring_doctor_code": doctor_code,
        "resident": {"id_number": synthetic_id(region, seq=seq), "name": name or f"张{seq}"},
        "consultation": {
            "encounter_id": f"ENC-{seq}",
            "encountered_at": (encountered_at or clock.now() - timedelta(hours=1)).isoformat(),
        },
        "diagnoses": diagnoses or ["I10"],
    }


def waitlist_entry(seq: int, *, clock: Clock, hospital_id: int, department_id: int, from_date: date,
                   to_date: date | None = None, doctor_code: str = "FD-1", region: str = "340102",
                   diagnoses: list[str] | None = None, urgent_reason: str | None = None) -> dict[str, Any]:  # fmt: skip
    """A waiting-list entry's body for resident ``seq`` (signed with ``doctor_code``)."""
    return {
        "hospital_id": hospital_id,
        "department_id": department_id,
        "from_date": from_date.isoformat(),
        "to_date": (to_date or from_date).isoformat(),
        "referring_doctor_code": doctor_code,
        "resident": {"id_number": synthetic_id(region, seq=seq), "name": f"张{seq}"},
        "consultation": {
            "encounter_id": f"ENC-W{seq}",
            "encountered_at": (clock.now() - timedelta(hours=1)).isoformat(),
        },
        "diagnoses": diagnoses or ["I10"],
        "urgent": urgent_reason is not None,
        "urgent_reason": urgent_reason,
    }


def to_local(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(SHANGHAI)


async def push(
    client: Any, world: World, items: list[dict[str, Any]], who: str = "city_hospital", days_ahead: int = 2
) -> list[dict[str, Any]]:
    """Push as a HIS does: by default two days before the test's now, ahead of the pool window."""
    results: list[dict[str, Any]] = (await push_answer(client, world, items, who, days_ahead))["results"]
    return results


async def push_answer(
    client: Any, world: World, items: list[dict[str, Any]], who: str = "city_hospital", days_ahead: int = 2
) -> dict[str, Any]:
    """``push``, answering the whole body: the results and the ``reservation_changes``."""
    now = world.clock.now()
    world.clock.set(now - timedelta(days=days_ahead))
    try:
        r = await client.post("/v1/hospital/sessions", json={"sessions": items}, headers=world.auth(who))
    finally:
        world.clock.set(now)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def post_referral(client: Any, world: World, payload: dict[str, Any], who: str = "chc_a",
                        **headers: str) -> httpx.Response:  # fmt: skip
    """Ask to book as ``who`` (``POST /v1/referrals``); the answer is returned unchecked."""
    response: httpx.Response = await client.post(
        "/v1/referrals", json=payload, headers=world.auth(who) | headers
    )
    return response


async def book(client: Any, world: World, payload: dict[str, Any], who: str = "chc_a",
               **headers: str) -> dict[str, Any]:  # fmt: skip
    """Book as ``who``, which must succeed (201); the referral as answered."""
    r = await post_referral(client, world, payload, who, **headers)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def booked_referral(client: Any, world: World, day: date, signed: list[int], *, name: str | None = None,
                          item: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """One referral: the city hospital pushes session S1 (10 slots on ``day``, or ``item``),
    residents ``signed`` sign with chc_a's FD-1, and resident 1 books the first pool slot."""
    await push(client, world, [item or session_item("S1", day, slots=10)])
    await sign(client, world, signed, **({"name": name} if name is not None else {}))
    slots = await pool_slots(client, world)
    return await book(client, world, booking(slots[0]["slot_id"], 1, clock=world.clock, name=name))


async def sign(client: Any, world: World, seqs: list[int], who: str = "platform", **kwargs: Any) -> None:
    rows = [contract_row(seq, **kwargs) for seq in seqs]
    r = await client.post("/v1/contracts/sync", json={"contracts": rows}, headers=world.auth(who))
    assert r.status_code == 200, r.text
    assert r.json()["rejected"] == 0, r.text


async def pool_slots(client: Any, world: World, who: str = "chc_a", **params: Any) -> list[dict[str, Any]]:
    r = await client.get("/v1/pool/slots", params={"limit": 500, **params}, headers=world.auth(who))
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def add_wuhu_key(world: World, crypto: Crypto, key_name: str, role: str) -> None:
    """A key of an authority of 芜湖市 (340200), which covers none of the Hefei organisations above."""
    actor = Actor.system("test", now=world.clock.now())

    async def work(session: Any) -> None:
        org = await create_organisation(
            session=session,
            actor=actor,
            org=OrganisationIn(
                code="A-WUHU", name="芜湖市卫生健康委", kind="authority", region_code="340200"
            ),
        )
        _, world.keys[key_name] = await create_api_client(
            session=session, actor=actor, crypto=crypto, organisation_id=org.id, role=role, name=key_name
        )

    await world.db.run(work)


JIANGSU_REGIONS = [
    RegionIn(code="320000", name="江苏省", level="province"),
    RegionIn(code="320100", name="南京市", level="city", parent_code="320000"),
    RegionIn(code="320102", name="玄武区", level="county", parent_code="320100"),
]
JIANGSU_ORGS = {
    "jiangsu_commission": OrganisationIn(
        code="A-JS-COMM", name="江苏省卫生健康委", kind="authority", region_code="320000"
    ),
    "jiangsu_hospital": OrganisationIn(
        code="H-JS", name="南京市第一医院", kind="hospital", region_code="320102",
        hospital_level=3, hospital_tier="city",
    ),
    "jiangsu_chc": OrganisationIn(
        code="P-JS", name="玄武区玄武门社区卫生服务中心", kind="primary", region_code="320102",
        primary_kind="community",
    ),
    "jiangsu_platform": OrganisationIn(
        code="A-JS-PLAT", name="南京市预约诊疗平台", kind="authority", region_code="320100"
    ),
}  # fmt: skip
JIANGSU_KEYS = {
    "jiangsu_commission": ("jiangsu_commission", "commission"),
    "jiangsu_hospital": ("jiangsu_hospital", "hospital"),
    "jiangsu_chc": ("jiangsu_chc", "primary"),
    "jiangsu_platform": ("jiangsu_platform", "platform"),
    "jiangsu_hotline": ("jiangsu_platform", "hotline"),
}


async def add_jiangsu(world: World, crypto: Crypto) -> None:
    """A second province (江苏 320000): its commission, a hospital on the fuzhou preset and a centre."""
    actor = Actor.system("test", now=world.clock.now())

    async def work(session: Any) -> None:
        await upsert_regions(session=session, actor=actor, regions=JIANGSU_REGIONS)
        for name, org in JIANGSU_ORGS.items():
            world.ids[name] = (await create_organisation(session=session, actor=actor, org=org)).id
        await assign_policy(
            session=session, actor=actor, hospital_id=world.ids["jiangsu_hospital"], policy_code="fuzhou"
        )
        for key_name, (org_name, role) in JIANGSU_KEYS.items():
            _, world.keys[key_name] = await create_api_client(
                session=session,
                actor=actor,
                crypto=crypto,
                organisation_id=world.ids[org_name],
                role=role,
                name=key_name,
            )

    await world.db.run(work)
