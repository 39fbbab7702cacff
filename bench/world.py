"""The benchmarks' world: a small region, its organisations, policies and API keys, and
the request bodies the benchmarks send.

The benchmarks import no test module: what they seed is theirs, built through the
service's own functions (``upsert_regions``, ``create_organisation``, ``install_presets``,
``publish_policy``, ``assign_policy``, ``create_api_client``) exactly as an operator's
commands would. It is the same world as the test suite's ``tests/factories.py`` (same
codes, same policy, same keys) so that figures stay comparable with earlier runs, but
it is a copy on purpose: a change to the tests' fixtures cannot move a benchmark's
figures without anyone noticing, and a benchmark never breaks because a test helper
changed. Every resident ID here is synthetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from service.kit.clock import Clock, ManualClock, local_datetime
from service.kit.context import Actor
from service.kit.crypto import Crypto
from service.kit.db import Database
from service.policy.presets import CHRONIC_DISEASES, DEFAULT_NO_SHOW
from service.policy.service import assign_policy, install_presets, publish_policy
from service.registry.schemas import OrganisationIn, RegionIn
from service.registry.service import create_api_client, create_organisation, upsert_regions
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


def returned_data(i: int) -> dict[str, Any]:
    """A ``slots.returned`` event body that its schema accepts: one slot of session S-``i``."""
    return {
        "session": {"external_id": f"S-{i}", "service_date": "2026-03-10", "period": "morning"},
        "department": {"code": "CARD", "name": "心血管内科"},
        "public_at": "2026-03-03T00:00:00Z",
        "slots": [
            {
                "number": 1,
                "external_id": f"S-{i}-1",
                "starts_at": "2026-03-10T00:00:00Z",
                "ends_at": "2026-03-10T00:15:00Z",
            }
        ],
    }
