"""Built-in policies for the five regions of the seed documents (R1–R5, R7, R10, R13).

Each preset is version 1 of its code, effective from 2024-01-01. Presets are
shared: a commission that publishes one (POST /v1/policies) gets its region's
own copy, ``<code>-<region>``, and its hospitals move to it; the preset itself
never changes (docs/authorization.md).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from service.models.policy import DEFAULT_WHAT_TO_BRING, SLIP_ID_MAX_KEEP_FIRST, SLIP_ID_MAX_KEEP_LAST
from service.policy.signal_rules import default_thresholds

# R10: hypertension, diabetes, coronary heart disease, stroke (ICD-10 prefixes).
CHRONIC_DISEASES = [
    "I10", "I11", "I12", "I13", "I15",  # hypertensive diseases
    "E10", "E11", "E12", "E13", "E14",  # diabetes mellitus
    "I20", "I21", "I22", "I23", "I24", "I25",  # ischaemic heart diseases
    "I60", "I61", "I62", "I63", "I64", "I65", "I66", "I67", "I68", "I69",  # cerebrovascular
]  # fmt: skip
# R10: general hospitals reserve first from these departments (Tianjin).
TIANJIN_SPECIALTIES = [
    "cardiology", "hypertension", "geriatrics", "neurology", "endocrinology", "respiratory",
]  # fmt: skip

DEFAULT_NO_SHOW = {
    "max_no_shows": 3,
    "window_days": 180,
    "bar_days": 90,
    "text": "180天内爽约3次，90天内不能通过基层号源池预约本院号源。",
}

# R14: generous enough for any honest family doctor, tight enough to stop a scalper
# sweeping a hospital's pool. None would mean no limit (docs/limits.md).
DEFAULT_LIMITS: dict[str, Any] = {
    "doctor_hourly_limit": 20,
    "doctor_daily_limit": 60,
    "institution_share_limit": Decimal("0.50"),
    "resident_active_limit": 5,
}


def _preset(code: str, name: str, source: str, **rules: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "code": code,
        "version": 1,
        "name": name,
        "resource_kind": "outpatient",
        "effective_from": date(2024, 1, 1),
        "ratio": Decimal("0.20"),
        "ratio_base": "all_outpatient",
        "min_senior_share": Decimal("0"),
        "lead_minutes": 24 * 60,
        "scope": "by_tier",
        "disease_prefixes": CHRONIC_DISEASES,
        "preferred_specialties": [],
        "consultation_max_age_hours": 72,
        "cancel_cutoff_minutes": 120,
        "cancel_hotline": "12320",
        "no_show_rule": DEFAULT_NO_SHOW,
        "signal_thresholds": default_thresholds(),
        "source": source,
        # What Chinese hospitals print: the first 6 and last 4 characters of the ID (docs/slip.md).
        "what_to_bring": DEFAULT_WHAT_TO_BRING,
        "slip_id_keep_first": SLIP_ID_MAX_KEEP_FIRST,
        "slip_id_keep_last": SLIP_ID_MAX_KEEP_LAST,
        **DEFAULT_LIMITS,
        # The waiting list: a freed slot is held 10 minutes for the first in line; first come,
        # first served, no urgent priority unless a commission publishes one (docs/waitlist.md).
        "waitlist_offer_hold_minutes": 10,
        "waitlist_urgent_priority": False,
    }
    base.update(rules)
    return base


PRESETS: list[dict[str, Any]] = [
    _preset(
        "tianjin",
        "天津市二三级医院向基层预留号源",
        "002 att. 1: ≥20 % of outpatient slots, ≥50 % associate chief or above, "
        "open ≥1 day early, chronic diseases, six preferred departments, hotline 95169022",
        min_senior_share=Decimal("0.50"),
        scope="city",
        preferred_specialties=TIANJIN_SPECIALTIES,
        cancel_hotline="95169022",
    ),
    _preset(
        "fuzhou",
        "福州市二级及以上公立医院预留号源",
        "000 §1: ≥20 %; city hospitals to every primary institution of the city, "
        "county/district hospitals to their own jurisdiction",
        scope="by_tier",
    ),
    _preset(
        "shanghai",
        "上海浦东：专家号源向社区开放",
        "001 §一.三: ≥1/3 of expert slots to community institutions",
        # ⅓ at four decimals: ceil(0.3333 × n) equals ceil(n / 3) for every n below 10 000
        # slots per department-day, so the pool holds exactly a third, rounded up.
        ratio=Decimal("0.3333"),
        ratio_base="expert",
        min_senior_share=Decimal("0.50"),
        scope="jurisdiction",
    ),
    _preset(
        "heilongjiang",
        "黑龙江绥化：县域医共体牵头医院开放号源",
        "003 (五): county alliance lead hospitals open ≥20 % to township and village institutions",
        scope="alliance",
    ),
    _preset(
        "anhui-provincial",
        "安徽：省级医院向市县级医院开放号源",
        "004 att. 1 §二: provincial hospitals reserve ≥10 % for city and county hospitals",
        ratio=Decimal("0.10"),
        scope="lower_tier",
    ),
    # A city hospital of Anhui (Hefei's demo one): the province's own rule, not Tianjin's, so its
    # patients are told the province's 12320 hotline.
    _preset(
        "anhui-city",
        "安徽：城市三级医院向全市基层开放号源",
        "004 att. 2 §一: ≥20 % of outpatient slots; a city hospital's reserved slots open to every "
        "primary institution of the city, hotline 12320",
        scope="city",
    ),
    _preset(
        "anhui-alliance",
        "安徽：医联体、医共体牵头医院向基层开放号源",
        "004 att. 1 §二: alliance lead hospitals reserve ≥20 % for community and township centres",
        scope="alliance",
    ),
]
