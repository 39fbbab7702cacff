"""The demo region behind ``slotpool serve --demo``.

Anhui province, Hefei city, two of its districts (real GB/T 2260 codes) and a
handful of fictional institutions: a provincial hospital, a city tertiary
hospital and a district hospital leading an alliance of the district's
primary institutions; community and township health centres with their family
doctors; the commission, the hotline and the signing platform. About 300
signed residents with synthetic ID numbers, and two weeks of clinic sessions.

Everything goes through the service functions the API itself calls, so the
demo exercises the real rules: policies reserve the slots, contracts are
validated row by row, and so on.

Every hospital's HIS is played as pushing on time: a day's sessions are pushed
two hours before that day's pool window opens, or now if that is still ahead.
So sessions whose public release has passed were reserved and then returned
to the public (by the release loop once the server runs), the day whose pool
window is open right now has bookable slots, and later days open in the
coming days. Nothing is recorded as a shortfall that a punctual hospital
would not have.

Seeding is idempotent: once the region is complete (the commission, created
last, exists) a re-run only issues fresh API keys, since keys are stored as
digests and cannot be shown again.

The demo rolls forward: while ``serve --demo`` runs, the hospitals go on pushing,
so the coming SCHEDULE_DAYS days always have sessions (``roll_forward``), on the
sandbox's clock when the server is a sandbox.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import partial

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.clock import SHANGHAI, Clock, SandboxClock, local_date, local_datetime
from service.kit.config import Settings
from service.kit.context import Actor, Caller
from service.kit.crypto import Crypto
from service.kit.db import Database
from service.kit.periodic import every
from service.models.registry import Alliance, Organisation
from service.models.slots import ClinicSession
from service.policy.service import assign_policy, policy_in_force
from service.registry.schemas import AllianceIn, NoticeSettingsIn, OrganisationIn, RegionIn
from service.registry.service import (
    create_alliance,
    create_api_client,
    create_organisation,
    org_by_code,
    set_notice_settings,
    upsert_regions,
)
from service.residents.idnumber import check_char
from service.residents.schemas import ContractIn, FamilyDoctorIn, ResidentIn
from service.residents.service import sync_contracts
from service.sandbox.service import read_offset
from service.slots.schemas import DepartmentIn, DoctorIn, SessionIn, SlotIn
from service.slots.service import push_sessions

SCHEDULE_DAYS = 14
SLOTS_PER_SESSION = 12
RELEASE_DAYS_AHEAD = 7  # public release: 7 days before the service date ...
RELEASE_HOUR = 8  # ... at 08:00 Beijing time
PUSH_AHEAD = timedelta(hours=2)  # how long before its pool opens a punctual HIS pushes a day
RESIDENTS = 300
SEED = 2260  # the demo's names, birth dates and contracts are the same on every run

REGIONS = [
    RegionIn(code="340000", name="安徽省", level="province"),
    RegionIn(code="340100", name="合肥市", level="city", parent_code="340000"),
    RegionIn(code="340102", name="瑶海区", level="county", parent_code="340100"),
    RegionIn(code="340104", name="蜀山区", level="county", parent_code="340100"),
]


@dataclass(frozen=True)
class DemoDepartment:
    code: str
    name: str
    specialty: str | None
    minutes: int  # slot length; 15 or 20 (R16: never more than 30)


@dataclass(frozen=True)
class DemoHospital:
    org: OrganisationIn
    policy: str
    departments: tuple[DemoDepartment, ...]


PROVINCIAL = DemoHospital(
    OrganisationIn(
        code="DEMO-H-PROV", name="安徽省江淮医院", kind="hospital", region_code="340104",
        hospital_level=3, hospital_tier="provincial",
        address_line="安徽省合肥市蜀山区江淮大道100号", postal_code="230031", phone="0551-60000100",
    ),
    "anhui-provincial",
    (
        DemoDepartment("XNK", "心血管内科", "cardiology", 15),
        DemoDepartment("NFM", "内分泌科", "endocrinology", 15),
        DemoDepartment("SJN", "神经内科", "neurology", 20),
        DemoDepartment("ZLK", "肿瘤科", "oncology", 20),
        DemoDepartment("XHN", "消化内科", "gastroenterology", 15),
    ),
)  # fmt: skip
CITY = DemoHospital(
    OrganisationIn(
        code="DEMO-H-CITY", name="合肥市明湖医院", kind="hospital", region_code="340104",
        hospital_level=3, hospital_tier="city",
        address_line="安徽省合肥市蜀山区明湖路200号", postal_code="230031", phone="0551-60000200",
    ),
    "anhui-city",  # Anhui's own rule for a city hospital: open to every primary institution of Hefei
    (
        DemoDepartment("CARD", "心血管内科", "cardiology", 15),
        DemoDepartment("ENDO", "内分泌科", "endocrinology", 20),
        DemoDepartment("NEUR", "神经内科", "neurology", 15),
        DemoDepartment("RESP", "呼吸与危重症医学科", "respiratory", 20),
        DemoDepartment("GERI", "老年医学科", "geriatrics", 15),
        DemoDepartment("ORTH", "骨科", "orthopaedics", 20),  # not a preferred specialty
    ),
)  # fmt: skip
DISTRICT = DemoHospital(
    OrganisationIn(
        code="DEMO-H-YHQ", name="瑶海区长淮人民医院", kind="hospital", region_code="340102",
        hospital_level=2, hospital_tier="county",
        address_line="安徽省合肥市瑶海区长淮路300号", postal_code="230011", phone="0551-60000300",
    ),
    "anhui-alliance",
    (
        DemoDepartment("QK", "全科医学科", "general_practice", 15),
        DemoDepartment("NK1", "心内科", "cardiology", 15),
        DemoDepartment("NK2", "内分泌科", "endocrinology", 20),
        DemoDepartment("HXK", "呼吸内科", "respiratory", 20),
        DemoDepartment("PWK", "普外科", "general_surgery", 15),
    ),
)  # fmt: skip
HOSPITALS = (PROVINCIAL, CITY, DISTRICT)

# Primary institutions and how many family doctors each has.
PRIMARY = (
    (OrganisationIn(code="DEMO-P-CHL", name="瑶海区长淮路社区卫生服务中心", kind="primary",
                    region_code="340102", primary_kind="community"), 3),
    (OrganisationIn(code="DEMO-P-DC", name="瑶海区东城社区卫生服务中心", kind="primary",
                    region_code="340102", primary_kind="community"), 3),
    (OrganisationIn(code="DEMO-P-MH", name="瑶海区磨湖镇卫生院", kind="primary",
                    region_code="340102", primary_kind="township"), 2),
    (OrganisationIn(code="DEMO-P-XYL", name="蜀山区西园路社区卫生服务中心", kind="primary",
                    region_code="340104", primary_kind="community"), 3),
    (OrganisationIn(code="DEMO-P-QLG", name="蜀山区青龙岗镇卫生院", kind="primary",
                    region_code="340104", primary_kind="township"), 2),
)  # fmt: skip
PLATFORM = OrganisationIn(code="DEMO-A-PLAT", name="合肥市家庭医生签约服务平台", kind="authority", region_code="340100")  # fmt: skip
HOTLINE = OrganisationIn(code="DEMO-A-HOT", name="合肥市12320卫生健康热线", kind="authority", region_code="340100")  # fmt: skip
# Created last: its presence means the whole region was seeded.
COMMISSION = OrganisationIn(code="DEMO-A-COMM", name="安徽省卫生健康委员会", kind="authority", region_code="340000")  # fmt: skip
ALLIANCE_NAME = "瑶海区长淮紧密型医联体"

# One key per role, and whose it is. The primary key belongs to a Yaohai community
# centre: in the city hospital's city-wide scope and a member of the district alliance.
KEY_HOLDERS: dict[str, OrganisationIn] = {
    "hospital": CITY.org,
    "primary": PRIMARY[0][0],
    "platform": PLATFORM,
    "hotline": HOTLINE,
    "commission": COMMISSION,
}

SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
    "姚卢姜崔钟谭陆汪范金石廖贾夏韦方白邹孟熊秦邱江尹薛段雷侯龙史陶黎贺顾毛郝龚邵万钱严武戴莫孔汤"
)
GIVEN_MALE = "伟强军磊勇杰涛明超刚平辉建国华志文斌宏林峰海东波鹏飞成康庆春德永"
GIVEN_FEMALE = "芳娜敏静丽艳娟霞秀英玲桂兰萍红燕琴梅莉婷雪慧洁颖琳凤珍玉翠月"


def synthetic_name(rng: random.Random, *, male: bool) -> str:
    given = GIVEN_MALE if male else GIVEN_FEMALE
    return rng.choice(SURNAMES) + "".join(rng.choice(given) for _ in range(rng.choice((1, 2))))


def synthetic_id_number(region: str, born: date, seq: int) -> str:
    """A well-formed but invented 18-character ID: district, birth date, sequence, check character."""
    first17 = f"{region}{born:%Y%m%d}{seq:03d}"
    return first17 + check_char(first17)


# --- building the data -----------------------------------------------------------------


def contract_rows(today: date) -> dict[str, list[ContractIn]]:
    """RESIDENTS signed residents spread over the primary institutions, contracts covering today."""
    rng = random.Random(SEED)
    rows: dict[str, list[ContractIn]] = {org.code: [] for org, _ in PRIMARY}
    doctors = {
        org.code: [
            FamilyDoctorIn(
                code=f"FD-{n + 1:02d}",
                name=synthetic_name(rng, male=rng.random() < 0.5),
                title=("attending", "resident", "associate_chief")[n],
            )
            for n in range(count)
        ]
        for org, count in PRIMARY
    }
    per_district: dict[str, int] = {}
    for i in range(RESIDENTS):
        org, _ = PRIMARY[i % len(PRIMARY)]
        k = per_district.get(org.region_code, 0)
        per_district[org.region_code] = k + 1
        male = rng.random() < 0.48
        born = date(1940, 1, 1) + timedelta(days=rng.randrange(365 * 50))  # aged about 30 to 85
        seq = 2 * k + (1 if male else 2)  # GB 11643: odd for men, even for women
        starts_on = today - timedelta(days=rng.randrange(1, 330))
        rows[org.code].append(
            ContractIn(
                contract_no=f"QY-{org.code[7:]}-{len(rows[org.code]) + 1:04d}",
                institution_code=org.code,
                family_doctor=rng.choice(doctors[org.code]),
                resident=ResidentIn(
                    id_number=synthetic_id_number(org.region_code, born, seq),
                    name=synthetic_name(rng, male=male),
                ),
                starts_on=starts_on,
                ends_on=starts_on + timedelta(days=364),  # a one-year contract
            )
        )
    return rows


TITLES = ("chief", "associate_chief", "associate_chief", "attending", "resident")


def department_doctors(hospital: DemoHospital, dept: DemoDepartment) -> list[DoctorIn]:
    """Five doctors, every title present; names stable per hospital and department."""
    rng = random.Random(f"{SEED}-{hospital.org.code}-{dept.code}")
    return [
        DoctorIn(code=f"{dept.code}-{n + 1:02d}", name=synthetic_name(rng, male=rng.random() < 0.55), title=t)
        for n, t in enumerate(TITLES)
    ]


def session_items(hospital: DemoHospital, day: date) -> list[SessionIn]:
    """A morning (senior doctor) and an afternoon session for every department on ``day``."""
    public_at = local_datetime(day - timedelta(days=RELEASE_DAYS_AHEAD), RELEASE_HOUR)
    items = []
    for d, dept in enumerate(hospital.departments):
        doctors = department_doctors(hospital, dept)
        rota = day.toordinal() + d
        morning = doctors[rota % 3]  # chief or one of the associate chiefs
        afternoon = doctors[3 + rota % 2] if rota % 3 else doctors[(rota + 1) % 3]
        for period, doctor, hour, minute in (
            ("morning", morning, 8, 0),
            ("afternoon", afternoon, 14 if dept.minutes == 15 else 13, 0 if dept.minutes == 15 else 30),
        ):
            external_id = f"{dept.code}-{day:%Y%m%d}-{'AM' if period == 'morning' else 'PM'}"
            start = local_datetime(day, hour, minute)
            step = timedelta(minutes=dept.minutes)
            items.append(
                SessionIn(
                    external_id=external_id,
                    version=1,
                    department=DepartmentIn(code=dept.code, name=dept.name, specialty=dept.specialty),
                    doctor=doctor,
                    service_date=day,
                    period=period,
                    public_at=public_at,
                    slots=[
                        SlotIn(
                            number=n,
                            external_id=f"{external_id}-{n:02d}",
                            starts_at=start + step * (n - 1),
                            ends_at=start + step * n,
                        )
                        for n in range(1, SLOTS_PER_SESSION + 1)
                    ],
                )
            )
    return items


# --- writing it ------------------------------------------------------------------------


async def _org_id(session: AsyncSession, code: str) -> int | None:
    return await session.scalar(select(Organisation.id).where(Organisation.code == code))


async def _setup_registry(session: AsyncSession, actor: Actor) -> None:
    """Regions, organisations (all but the commission), policies and the alliance."""
    await upsert_regions(session=session, actor=actor, regions=REGIONS)
    for org in [h.org for h in HOSPITALS] + [org for org, _ in PRIMARY] + [PLATFORM, HOTLINE]:
        if await _org_id(session, org.code) is None:
            await create_organisation(session=session, actor=actor, org=org)
    for hospital in HOSPITALS:
        row = await org_by_code(session, hospital.org.code)
        await assign_policy(session=session, actor=actor, hospital_id=row.id, policy_code=hospital.policy)
    lead = await org_by_code(session, DISTRICT.org.code)
    exists = await session.scalar(
        select(Alliance.id).where(Alliance.lead_hospital_id == lead.id, Alliance.name == ALLIANCE_NAME)
    )
    if exists is None:
        await create_alliance(
            session=session,
            actor=actor,
            alliance=AllianceIn(
                name=ALLIANCE_NAME,
                lead_hospital_code=DISTRICT.org.code,
                member_codes=[org.code for org, _ in PRIMARY if org.region_code == DISTRICT.org.region_code],
            ),
        )


def _acting_as(org: Organisation, role: str) -> Caller:
    """The organisation acting directly, as the demo's seeding does, not through an API client."""
    return Caller(
        client_id=0,
        org_id=org.id,
        role=role,
        org_kind=org.kind,
        org_name=org.name,
        region_code=org.region_code,
    )


async def _sync(session: AsyncSession, actor: Actor, crypto: Crypto, rows: list[ContractIn]) -> None:
    caller = _acting_as(await org_by_code(session, PLATFORM.code), "platform")
    result = await sync_contracts(session=session, actor=actor, caller=caller, crypto=crypto, rows=rows)
    if result.rejected:
        bad = next(r for r in result.results if r.result == "rejected")
        raise RuntimeError(f"demo contract {bad.contract_no} rejected: {bad.errors}")


async def _push_day(
    session: AsyncSession, crypto: Crypto, now: datetime, hospital: DemoHospital, day: date
) -> None:
    org = await org_by_code(session, hospital.org.code)
    policy = await policy_in_force(session=session, hospital_id=org.id, on=day, kind="outpatient")
    public_at = local_datetime(day - timedelta(days=RELEASE_DAYS_AHEAD), RELEASE_HOUR)
    pool_opens_at = public_at - timedelta(minutes=policy.lead_minutes)
    actor = Actor.system("demo", now=min(now, pool_opens_at - PUSH_AHEAD))
    results = await push_sessions(
        session=session, actor=actor, crypto=crypto, hospital=org, items=session_items(hospital, day)
    )
    rejected = [r for r in results.results if r.result == "rejected"]
    if rejected:
        raise RuntimeError(f"demo session {rejected[0].external_id} rejected: {rejected[0].errors}")


def progress(step: int, total: int, what: str) -> None:
    """One line on stderr per step of the seeding, so a first start that takes a while shows why."""
    print(f"seeding the demo region ({step}/{total}): {what}", file=sys.stderr, flush=True)


async def _seed(db: Database, clock: Clock, crypto: Crypto) -> None:
    now = clock.now()
    actor = Actor.system("demo", now=now)
    today = local_date(now)
    total = 2 + len(PRIMARY) + len(HOSPITALS)
    progress(1, total, "regions, organisations, policies, the alliance")
    await db.run(partial(_setup_registry, actor=actor))
    for step, (code, rows) in enumerate(contract_rows(today).items(), start=2):
        progress(step, total, f"{len(rows)} signed residents of {code}")
        await db.run(partial(_sync, actor=actor, crypto=crypto, rows=rows))
    for step, hospital in enumerate(HOSPITALS, start=2 + len(PRIMARY)):
        progress(step, total, f"{SCHEDULE_DAYS} days of sessions at {hospital.org.name}")
        for offset in range(SCHEDULE_DAYS):
            day = today + timedelta(days=offset)
            await db.run(partial(_push_day, crypto=crypto, now=now, hospital=hospital, day=day))
    progress(total, total, "the commission and Hefei's patient channels")
    await db.run(partial(_setup_commission, actor=actor))


# What the commission configures for Hefei: the SMS gateway's signature and templates, and the
# city booking portal's page for a slot. The codes and the portal are placeholders a region
# replaces with its own registered ones (docs/slip.md, docs/fhir.md).
HEFEI_NOTICES = NoticeSettingsIn(
    sms_sign_name="合肥健康",
    sms_template_booked="SMS_DEMO_BOOKED",
    sms_template_cancelled="SMS_DEMO_CANCELLED",
    booking_link_template="https://booking.demo.example/hefei/slots/{slot_id}",
)


async def _setup_commission(session: AsyncSession, actor: Actor) -> None:
    """The commission last, which marks the region complete, with the settings it makes: one
    transaction, so a complete region always has them."""
    commission = await create_organisation(session=session, actor=actor, org=COMMISSION)
    caller = _acting_as(commission, "commission")
    await set_notice_settings(
        session=session, actor=actor, caller=caller, region_code="340100", settings=HEFEI_NOTICES
    )


async def _days_pushed(session: AsyncSession, hospital: DemoHospital, days: list[date]) -> set[date]:
    org_id = await _org_id(session, hospital.org.code)
    if org_id is None:
        return set(days)  # not seeded (yet): nothing to roll
    rows = await session.scalars(
        select(ClinicSession.service_date)
        .where(ClinicSession.hospital_id == org_id, ClinicSession.service_date.in_(days))
        .distinct()
    )
    return set(rows)


async def roll_forward(db: Database, clock: Clock, crypto: Crypto) -> int:
    """Push every day of the coming SCHEDULE_DAYS that a demo hospital has no sessions for yet;
    returns how many hospital-days were pushed. Days already there are left as they are."""
    if await db.run(lambda s: _org_id(s, COMMISSION.code)) is None:
        return 0  # the region is not (completely) seeded
    now = clock.now()
    today = local_date(now)
    days = [today + timedelta(days=offset) for offset in range(SCHEDULE_DAYS)]
    pushed = 0
    for hospital in HOSPITALS:
        there = await db.run(partial(_days_pushed, hospital=hospital, days=days))
        for day in days:
            if day not in there:
                await db.run(partial(_push_day, crypto=crypto, now=now, hospital=hospital, day=day))
                pushed += 1
    return pushed


# How often the running demo looks for days to push: a new day appears at midnight (or when a
# sandbox's clock moves), and a look that finds nothing to do is one query per hospital.
ROLL_SECONDS = 60.0


async def roll_forward_loop(url: str, settings: Settings, *, stop: asyncio.Event) -> None:
    """``roll_forward`` every ROLL_SECONDS until ``stop``; a sandbox's clock is read at each pass."""
    crypto = Crypto.from_settings(settings)
    db = Database(url, pool_size=1)
    clock = SandboxClock() if settings.sandbox else Clock()

    async def once() -> None:
        if isinstance(clock, SandboxClock):
            clock.adopt(await db.run(read_offset))
        if pushed := await roll_forward(db, clock, crypto):
            print(f"demo: {pushed} hospital-days of sessions pushed", file=sys.stderr, flush=True)

    try:
        await every(ROLL_SECONDS, once, name="demo_roll_forward", stop=stop)
    finally:
        await db.dispose()


def roll_forward_in_background(url: str, settings: Settings) -> threading.Thread:
    """The roll-forward in a thread of the serving process, beside uvicorn (one or N workers),
    which owns the main thread. A daemon: it ends with the process."""

    def main() -> None:
        asyncio.run(roll_forward_loop(url, settings, stop=asyncio.Event()))

    thread = threading.Thread(target=main, name="demo-roll-forward", daemon=True)
    thread.start()
    return thread


async def _issue_keys(session: AsyncSession, crypto: Crypto, actor: Actor) -> dict[str, str]:
    keys: dict[str, str] = {}
    for role, holder in KEY_HOLDERS.items():
        org = await org_by_code(session, holder.code)
        _, token = await create_api_client(
            session=session,
            actor=actor,
            crypto=crypto,
            organisation_id=org.id,
            role=role,
            name=f"demo {role} key",
        )
        keys[role] = token
    return keys


async def seed_demo(url: str, settings: Settings, *, clock: Clock | None = None) -> dict[str, str]:
    """Seed the demo region unless it is there already, or bring its two weeks of sessions up
    to today; return fresh API keys, role -> key. ``clock``: a sandbox's, when it is one."""
    clock = clock or Clock()
    crypto = Crypto.from_settings(settings)
    db = Database(url, pool_size=2)
    try:
        seeded = await db.run(lambda s: _org_id(s, COMMISSION.code))
        if seeded is None:
            started = time.perf_counter()
            await _seed(db, clock, crypto)
            print(
                f"demo region seeded in {time.perf_counter() - started:.1f} s: "
                f"{len(HOSPITALS)} hospitals, {len(PRIMARY)} primary institutions, "
                f"{RESIDENTS} signed residents, {SCHEDULE_DAYS} days of sessions",
                file=sys.stderr,
            )
        else:
            pushed = await roll_forward(db, clock, crypto)
            print(
                f"demo region already seeded ({pushed} hospital-days of sessions added to reach "
                f"{SCHEDULE_DAYS} days ahead); issuing fresh API keys",
                file=sys.stderr,
            )

        async def issue(session: AsyncSession) -> dict[str, str]:
            return await _issue_keys(session, crypto, Actor.system("demo", now=clock.now()))

        return await db.run(issue)
    finally:
        await db.dispose()


# --- showing the keys ------------------------------------------------------------------


def _base_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


@dataclass(frozen=True)
class DemoBooking:
    """Who the printed booking example books for: a signed resident of the primary key's centre."""

    institution: str
    doctor_code: str
    id_number: str  # synthetic: invented digits with a valid GB 11643 check character
    name: str


def booking_example(today: date) -> DemoBooking:
    """The primary key's resident whose contract runs longest, and that resident's family doctor.

    The residents, their doctors and how long ago each contract started do not depend
    on ``today`` (only the dates do), so this is the same resident whenever the region
    was seeded, and the one whose contract stays in force longest after seeding.
    """
    holder = KEY_HOLDERS["primary"]
    row = max(contract_rows(today)[holder.code], key=lambda r: r.ends_on)  # first of any tie
    return DemoBooking(
        institution=holder.name,
        doctor_code=row.family_doctor.code,
        id_number=row.resident.id_number,
        name=row.resident.name,
    )


def booking_lines(variable: str, now: datetime) -> list[str]:
    """Shell lines booking the first slot listed for the primary key, consultation an hour before ``now``."""
    example = booking_example(local_date(now))
    body = {
        "referring_doctor_code": example.doctor_code,
        "resident": {"id_number": example.id_number, "name": example.name},
        "consultation": {
            "encounter_id": f"DEMO-ENC-{now.astimezone(SHANGHAI):%Y%m%d%H%M}",
            "encountered_at": (now - timedelta(hours=1)).astimezone(SHANGHAI).isoformat(timespec="seconds"),
        },
        "diagnoses": ["I10"],  # hypertension: on every preset policy's disease list
    }
    rest = json.dumps(body, ensure_ascii=False)
    assert "'" not in rest, "the body is pasted inside single quotes"
    auth = f'-H "Authorization: Bearer ${variable}"'
    pick = 'python3 -c \'import json,sys; print(json.load(sys.stdin)["items"][0]["slot_id"])\''
    return [
        f'  SLOT=$(curl -s {auth} "$SLOTPOOL/v1/pool/slots?limit=1" | {pick})',
        f'  curl -s -X POST {auth} -H "Content-Type: application/json" -H "Idempotency-Key: demo-1" '
        f'"$SLOTPOOL/v1/referrals" -d \'{{"slot_id": \'"$SLOT"\', {rest[1:]}\'',
    ]


def print_demo_keys(keys: dict[str, str], *, host: str, port: int, now: datetime | None = None) -> None:
    """The demo keys, a few curl lines that use them, and a booking example, on stdout."""
    out: list[str] = [
        "",
        "slotpool demo: 安徽省 / 合肥市 (瑶海区, 蜀山区)",
        "API keys (new on every start; the service keeps only their digests):",
        "",
    ]
    for role, key in keys.items():
        holder = KEY_HOLDERS.get(role)
        out.append(f"  {role:<11} {key}  {holder.name if holder else ''}")
    variables = {role: f"{role.upper()}_KEY" for role in keys}
    out += ["", "Paste into a shell:", "", f"  SLOTPOOL={_base_url(host, port)}"]
    out += [f"  {variables[role]}={key}" for role, key in keys.items()]
    examples: list[tuple[str, str]] = [
        ("hospital", "/v1/me"),
        ("primary", "/v1/pool/slots?limit=5"),
        ("commission", "/v1/policies"),
        ("commission", "/v1/shortfalls"),
    ]
    out.append("")
    for role, path in examples:
        if role in variables:
            out.append(f'  curl -s -H "Authorization: Bearer ${variables[role]}" "$SLOTPOOL{path}"')
    if "primary" in variables:
        now = now or Clock().now()
        example = booking_example(local_date(now))
        out += [
            "",
            f"Booking the first listed slot for {example.name} (the ID number is synthetic), "
            f"signed with family doctor {example.doctor_code} of {example.institution}, for hypertension:",
            "",
            *booking_lines(variables["primary"], now),
        ]
    out.append("")
    print("\n".join(out), flush=True)
