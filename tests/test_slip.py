"""The printable referral slip and the patient notice (R11), read as a person would read them."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
import pytest
import zxingcpp
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from service.kit.clock import SHANGHAI, zh_instant
from service.kit.version import PRODUCT, VERSION
from service.models.audit import AuditEntry
from service.models.policy import DEFAULT_WHAT_TO_BRING
from service.models.registry import RegionNoticeSettings
from service.referrals.schemas import Notice
from service.slip.service import (
    SMS_MAX_CHARACTERS,
    SMS_PARAM_MAX_CHARACTERS,
    sms_out,
    sms_template,
    sms_text,
    sms_units,
)
from tests.factories import booked_referral, push, session_item, synthetic_id
from tests.test_authorization import policy_body

DAY = date(2026, 3, 10)
NAME = "张伟"
LOCATION = "门诊楼3层B区"
NO_SHOW = "180天内爽约3次，90天内不能通过基层号源池预约本院号源。"
ID_NUMBER = synthetic_id("340102", seq=1)
SLIP_ID = ID_NUMBER[:6] + "*" * 8 + ID_NUMBER[-4:]  # the policy's default: first 6, last 4


async def _book(client, world, clock, *, location: str | None = LOCATION) -> dict:
    item = session_item("S1", DAY, slots=10)
    if location is not None:
        item["location"] = location
    return await booked_referral(client, world, DAY, [1], name=NAME, item=item)


@pytest.fixture
async def referral(client, world, clock):
    return await _book(client, world, clock)


async def _slip(client, world, reference: str, who: str = "chc_a") -> bytes:
    r = await client.get(f"/v1/referrals/{reference}/slip.pdf", headers=world.auth(who))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pdf"
    assert r.content.startswith(b"%PDF-")
    return r.content


def _text(pdf: bytes) -> str:
    doc = pdfium.PdfDocument(pdf)
    try:
        assert len(doc) == 1
        page = doc[0]
        textpage = page.get_textpage()
        text = textpage.get_text_range()
        textpage.close()
        page.close()
        return str(text)
    finally:
        doc.close()


def _qr_codes(pdf: bytes) -> list[str]:
    """Render the page at 150 dpi, as a printer or a screen would, and decode what a scanner sees."""
    doc = pdfium.PdfDocument(pdf)
    try:
        page = doc[0]
        image = page.render(scale=150 / 72).to_pil()
        page.close()
    finally:
        doc.close()
    return [b.text for b in zxingcpp.read_barcodes(image) if b.format == zxingcpp.BarcodeFormat.QRCode]


def _font_dictionaries(pdf: bytes) -> list[tuple[bytes, bytes | None]]:
    """Every /Type /Font dictionary with the body of its font descriptor (None if it has none)."""
    objects = {m.group(1): m.group(2) for m in re.finditer(rb"(\d+) 0 obj(.*?)endobj", pdf, re.DOTALL)}
    fonts = []
    for body in objects.values():
        if re.search(rb"/Type\s*/Font\b(?!Descriptor)", body):
            ref = re.search(rb"/FontDescriptor\s+(\d+)\s+0\s+R", body)
            fonts.append((body, objects.get(ref.group(1)) if ref else None))
    return fonts


def _pdfium_fonts_embedded(pdf: bytes) -> list[bool]:
    """pdfium's own verdict, one per text object on the page."""
    doc = pdfium.PdfDocument(pdf)
    verdicts = []
    try:
        page = doc[0]
        for obj in page.get_objects():
            if obj.type == pdfium_c.FPDF_PAGEOBJ_TEXT:
                font = pdfium_c.FPDFTextObj_GetFont(obj.raw)
                verdicts.append(bool(pdfium_c.FPDFFont_GetIsEmbedded(font)))
        page.close()
    finally:
        doc.close()
    return verdicts


async def test_r11_slip_embeds_every_font(client, world, referral):
    pdf = await _slip(client, world, referral["reference"])
    fonts = _font_dictionaries(pdf)
    assert fonts
    for body, descriptor in fonts:
        assert b"/Type0" not in body  # reportlab writes simple TrueType subsets; each has a descriptor
        assert descriptor is not None, body[:200]
        assert re.search(rb"/FontFile[23]?\s+\d+\s+0\s+R", descriptor), descriptor[:200]
    verdicts = _pdfium_fonts_embedded(pdf)
    assert verdicts
    assert all(verdicts)


async def test_r11_slip_carries_the_notice_and_only_masked_personal_data(client, world, referral):
    pdf = await _slip(client, world, referral["reference"])
    text = _text(pdf)
    for expected in (
        "合肥市第一人民医院",
        "心血管内科",
        "王医生",
        "副主任医师",
        "2026年3月10日（周二）",
        f"上午 {referral['notice']['time_band']} 第{referral['slot']['number']}号",
        LOCATION,
        "张*",
        SLIP_ID,
        referral["reference"],
        referral["verification_code"],
        "12320",
        NO_SHOW,
        "瑶海区明光路社区卫生服务中心",
    ):
        assert expected in text, expected
    # The API keeps its mask; the slip shows what window staff match against (R15, docs/slip.md).
    assert referral["resident_id_masked"] == ID_NUMBER[0] + "*" * 16 + ID_NUMBER[-1]
    assert referral["resident_id_masked"] not in text
    assert ID_NUMBER not in text and ID_NUMBER[6:14] not in text  # the birth date stays masked
    assert NAME not in text
    assert NAME.encode() not in pdf and synthetic_id("340102", seq=1).encode() not in pdf


async def test_r11_slip_qr_decodes_to_the_reference(client, world, referral):
    pdf = await _slip(client, world, referral["reference"])
    assert _qr_codes(pdf) == [referral["reference"]]


async def test_r11_slip_without_location_prints_none(client, world, clock):
    referral = await _book(client, world, clock, location=None)
    text = _text(await _slip(client, world, referral["reference"]))
    assert "就诊地点" not in text
    assert referral["reference"] in text


async def test_r11_location_follows_the_latest_session_version(client, world, referral):
    item = session_item("S1", DAY, slots=10, version=2)
    item["location"] = "新门诊楼5层"
    await push(client, world, [item])
    text = _text(await _slip(client, world, referral["reference"]))
    assert "新门诊楼5层" in text and LOCATION not in text


async def test_r11_receiving_hospital_gets_the_slip_without_the_verification_code(client, world, referral):
    text = _text(await _slip(client, world, referral["reference"], who="city_hospital"))
    assert referral["reference"] in text and "合肥市第一人民医院" in text
    assert referral["verification_code"] not in text
    assert "验证码 " not in text and "电话取消时需提供" not in text


@pytest.mark.parametrize(("who", "status"), [("chc_b", 404), ("district_hospital", 404), ("hotline", 403)])
async def test_r11_slip_and_notice_are_hidden_from_others(client, world, referral, who, status):
    for path in ("slip.pdf", "notice"):
        r = await client.get(f"/v1/referrals/{referral['reference']}/{path}", headers=world.auth(who))
        assert r.status_code == status, (path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    r = await client.get("/v1/referrals/RNOSUCH/slip.pdf", headers=world.auth("chc_a"))
    assert r.status_code == 404
    assert r.json()["code"] == "referral_not_found"


async def test_r11_cancelled_slip_says_so_and_has_no_qr(client, world, referral):
    r = await client.post(
        f"/v1/referrals/{referral['reference']}/cancel",
        json={"reason": "患者改期"},
        headers=world.auth("chc_a"),
    )
    assert r.status_code == 200
    pdf = await _slip(client, world, referral["reference"])
    text = _text(pdf)
    assert "本预约已取消，此单作废" in text
    assert referral["reference"] in text
    assert referral["verification_code"] not in text
    assert "如何取消" not in text
    assert _qr_codes(pdf) == []


async def test_r15_slip_and_notice_reads_are_audited(client, world, referral, db):
    await _slip(client, world, referral["reference"])
    await _slip(client, world, referral["reference"], who="city_hospital")
    r = await client.get(f"/v1/referrals/{referral['reference']}/notice", headers=world.auth("chc_a"))
    assert r.status_code == 200
    entries = await db.run(
        lambda s: s.scalars(
            select(AuditEntry).where(AuditEntry.action.like("referral.%_read")).order_by(AuditEntry.id)
        )
    )
    assert [(e.action, e.actor_org_id, e.detail["verification_code_shown"]) for e in entries] == [
        ("referral.slip_read", world.ids["chc_a"], True),
        ("referral.slip_read", world.ids["city_hospital"], False),
        ("referral.notice_read", world.ids["chc_a"], True),
    ]
    assert all(e.referral_id is not None and e.resident_id is not None for e in entries)


async def test_r11_notice_has_the_structured_notice_and_a_short_sms(client, world, referral):
    r = await client.get(f"/v1/referrals/{referral['reference']}/notice", headers=world.auth("chc_a"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["notice"] == referral["notice"]
    assert body["location"] == LOCATION
    assert body["resident_name_masked"] == "张*"
    assert body["verification_code"] == referral["verification_code"]
    sms = body["sms"]
    for expected in (
        "合肥市第一人民医院",
        "心血管内科",
        "3月10日（周二）",
        f"上午{referral['notice']['time_band']}，{referral['slot']['number']}号",
        referral["reference"],
        referral["verification_code"],
        f"如需取消，请于{zh_instant(datetime.fromisoformat(referral['notice']['cancel_deadline']))}前拨打12320",
    ):
        assert expected in sms["text"], expected
    assert sms["characters"] == len(sms["text"]) <= SMS_MAX_CHARACTERS
    assert sms["segments"] == 2
    assert NAME not in sms["text"] and "张*" not in sms["text"]


async def test_r11_hospital_notice_has_no_verification_code(client, world, referral):
    r = await client.get(f"/v1/referrals/{referral['reference']}/notice", headers=world.auth("city_hospital"))
    assert r.status_code == 200
    assert r.json()["verification_code"] is None
    assert referral["verification_code"] not in r.json()["sms"]["text"]


async def test_r11_cancelled_notice_tells_the_patient(client, world, referral):
    body = {
        "reference": referral["reference"],
        "verification_code": referral["verification_code"],
        "reason": "电话取消",
    }
    assert (
        await client.post("/v1/hotline/cancellations", json=body, headers=world.auth("hotline"))
    ).is_success
    r = await client.get(f"/v1/referrals/{referral['reference']}/notice", headers=world.auth("chc_a"))
    assert r.json()["status"] == "cancelled"
    assert r.json()["verification_code"] is None
    assert "已取消" in r.json()["sms"]["text"]
    assert referral["reference"] in r.json()["sms"]["text"]


def _notice(
    hospital: str,
    department: str,
    doctor: str | None = "王医生",
    *,
    kind: str = "outpatient",
    modality: str | None = None,
    ward: str | None = None,
) -> Notice:
    return Notice(
        hospital=hospital,
        department=department,
        resource_kind=kind,
        modality=modality,
        ward=ward,
        doctor=doctor,
        doctor_title="associate_chief" if doctor else None,
        service_date=DAY,
        period="morning",
        time_band="08:00-08:15",
        slot_number=12,
        reference="R260310ABCDEF",
        how_to_cancel="…",
        cancel_hotline="0551-12320",
        cancel_deadline=datetime(2026, 3, 10, 6, 0, tzinfo=SHANGHAI),
        no_show_rule=NO_SHOW,
        hospital_address=None,
        hospital_postal_code=None,
        hospital_phone=None,
        what_to_bring=DEFAULT_WHAT_TO_BRING,
    )


names = st.text(
    alphabet=st.sampled_from("合肥市第一人民医院心血管内科附属𠀀𪚥ABC（）"), min_size=1, max_size=200
)


@settings(max_examples=200, deadline=None)
@given(hospital=names, department=names, doctor=names, location=st.none() | names)
def test_r11_sms_fits_two_segments_whatever_the_names(hospital, department, doctor, location):
    """Hospital, department, doctor and location come from a HIS and may be of any length."""
    text = sms_text(
        _notice(hospital, department, doctor), status="booked", location=location, verification_code="123456"
    )
    assert sms_units(text) <= SMS_MAX_CHARACTERS
    assert sms_out(text).segments <= 2
    for kept in ("R260310ABCDEF", "123456", "0551-12320", "3月10日（周二）上午08:00-08:15", "3月10日06:00"):
        assert kept in text
    assert hospital[:1] in text and department[:1] in text


def test_r11_sms_drops_the_doctor_then_the_location_before_cutting_names():
    def text(location: str | None) -> str:
        return sms_text(
            _notice("某医院", "内科"), status="booked", location=location, verification_code="123456"
        )

    assert "王医生副主任医师" in text(None)
    assert "地点：2楼。" in text("2楼") and "王医生" not in text("2楼")
    crowded = text("门诊楼" * 10)
    assert "地点" not in crowded and "王医生" not in crowded
    assert "某医院内科" in crowded
    assert all(sms_units(t) <= SMS_MAX_CHARACTERS for t in (text(None), text("2楼"), crowded))


async def test_r11_location_longer_than_a_slip_line_is_refused(client, world):
    item = session_item("S1", DAY, slots=10)
    item["location"] = "楼" * 101
    r = await client.post(
        "/v1/hospital/sessions", json={"sessions": [item]}, headers=world.auth("city_hospital")
    )
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_request"


CONTACT = {"address_line": "安徽省合肥市蜀山区淮河路390号", "postal_code": "230001", "phone": "0551-62283114"}


async def test_r11_slip_prints_the_hospitals_address_phone_and_what_to_bring(client, world, referral):
    text = _text(await _slip(client, world, referral["reference"]))
    assert "医院地址" not in text and "医院电话" not in text  # the registry has neither yet
    assert DEFAULT_WHAT_TO_BRING in text
    r = await client.patch(
        f"/v1/organisations/{world.ids['city_hospital']}", json=CONTACT, headers=world.auth("city_hospital")
    )
    assert r.status_code == 200, r.text
    text = _text(await _slip(client, world, referral["reference"]))
    for expected in (CONTACT["address_line"], "邮编 230001", CONTACT["phone"], DEFAULT_WHAT_TO_BRING):
        assert expected in text, expected
    notice = (await client.get(f"/v1/referrals/{referral['reference']}", headers=world.auth("chc_a"))).json()[
        "notice"
    ]
    assert (notice["hospital_address"], notice["hospital_postal_code"], notice["hospital_phone"]) == (
        CONTACT["address_line"],
        "230001",
        CONTACT["phone"],
    )
    assert notice["what_to_bring"] == DEFAULT_WHAT_TO_BRING


async def test_r15_slip_id_mask_and_what_to_bring_follow_the_policy(client, world, clock):
    """A new version of the hospital's policy decides for bookings made under it; the API mask stays."""
    body = policy_body(slip_id_keep_first=3, slip_id_keep_last=2, what_to_bring="身份证、医保卡和既往病历")
    r = await client.post("/v1/policies", json=body, headers=world.auth("commission"))
    assert r.status_code == 201, r.text
    assert (r.json()["slip_id_keep_first"], r.json()["slip_id_keep_last"]) == (3, 2)
    referral = await _book(client, world, clock)
    text = _text(await _slip(client, world, referral["reference"]))
    assert ID_NUMBER[:3] + "*" * 13 + ID_NUMBER[-2:] in text
    assert SLIP_ID not in text and "身份证、医保卡和既往病历" in text
    assert referral["resident_id_masked"] == ID_NUMBER[0] + "*" * 16 + ID_NUMBER[-1]


@pytest.mark.parametrize(
    "change",
    [{"slip_id_keep_first": 7}, {"slip_id_keep_last": 5}, {"slip_id_keep_first": -1}, {"what_to_bring": ""}],
)
async def test_r15_a_policy_cannot_print_more_of_the_id_number(client, world, change):
    r = await client.post("/v1/policies", json=policy_body(**change), headers=world.auth("commission"))
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_request"


async def test_slip_metadata_names_it_and_dates_it_by_the_injected_clock(client, world, clock, referral):
    pdf = await _slip(client, world, referral["reference"])
    doc = pdfium.PdfDocument(pdf)
    try:
        meta = doc.get_metadata_dict()
    finally:
        doc.close()
    now = clock.now().astimezone(SHANGHAI)
    assert meta["Title"] == f"转诊预约单 {referral['reference']}"
    assert meta["Author"] == meta["Producer"] == meta["Creator"] == PRODUCT == f"slotpool {VERSION}"
    assert meta["CreationDate"] == meta["ModDate"] == f"D:{now:%Y%m%d%H%M%S}+08'00'"
    assert "anonymous" not in meta.values() and not meta["CreationDate"].startswith("D:2000")
    # Reproducible: the same slip at the same clock reading is the same bytes; another reading is not.
    assert await _slip(client, world, referral["reference"]) == pdf
    clock.advance(timedelta(minutes=7))
    later = await _slip(client, world, referral["reference"])
    assert later != pdf
    doc = pdfium.PdfDocument(later)
    try:
        assert (
            doc.get_metadata_dict()["CreationDate"] == f"D:{now + timedelta(minutes=7):%Y%m%d%H%M%S}+08'00'"
        )
    finally:
        doc.close()


TEMPLATES = {
    "sms_sign_name": "合肥卫健",
    "sms_template_booked": "SMS_480215001",
    "sms_template_cancelled": "SMS_480215002",
}


async def test_r11_notice_gives_the_sms_as_the_regions_template_and_parameters(client, world, referral):
    url = f"/v1/referrals/{referral['reference']}/notice"
    assert (await client.get(url, headers=world.auth("chc_a"))).json()["sms"]["template"] is None
    # chc_a lies in 瑶海区 (340102); the city's row decides for it.
    r = await client.put(
        "/v1/regions/340100/notice-settings", json=TEMPLATES, headers=world.auth("commission")
    )
    assert r.status_code == 200, r.text
    body = (await client.get(url, headers=world.auth("chc_a"))).json()
    template = body["sms"]["template"]
    deadline = zh_instant(datetime.fromisoformat(referral["notice"]["cancel_deadline"]))
    params = {
        "hospital": "合肥市第一人民医院",
        "department": "心血管内科",
        "time": f"3月10日（周二）上午{referral['notice']['time_band']}",
        "number": f"{referral['slot']['number']}号",
        "reference": referral["reference"],
        "code": referral["verification_code"],
        "deadline": deadline,
        "hotline": "12320",
    }
    assert template == {
        "sign_name": "合肥卫健",
        "template_code": "SMS_480215001",
        "params": params,
        "param_set": list(params.values()),
    }
    assert list(template["params"]) == list(params)  # the documented order, for positional gateways
    for value in template["param_set"]:
        assert NAME not in value and "张" not in value and ID_NUMBER not in value
    # The hospital is not given the code the booking template carries.
    hospital = (await client.get(url, headers=world.auth("city_hospital"))).json()
    assert hospital["sms"]["template"] is None

    cancel = {
        "reference": referral["reference"],
        "verification_code": referral["verification_code"],
        "reason": "x",
    }
    assert (
        await client.post("/v1/hotline/cancellations", json=cancel, headers=world.auth("hotline"))
    ).is_success
    for who in ("chc_a", "city_hospital"):
        cancelled = (await client.get(url, headers=world.auth(who))).json()["sms"]["template"]
        assert cancelled["template_code"] == "SMS_480215002"
        assert cancelled["params"] == {k: params[k] for k in ("hospital", "department", "time", "reference")}


@settings(max_examples=100, deadline=None)
@given(hospital=names, department=names)
def test_r11_sms_template_parameters_fit_the_gateways_bound(hospital, department):
    row = RegionNoticeSettings(region_code="340100", **TEMPLATES)
    template = sms_template(
        _notice(hospital, department), status="booked", verification_code="123456", settings=row
    )
    assert template is not None
    assert all(sms_units(v) <= SMS_PARAM_MAX_CHARACTERS for v in template.param_set)
    assert template.params["hospital"][:1] == hospital[:1] and template.params["code"] == "123456"
