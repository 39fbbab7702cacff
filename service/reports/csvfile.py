"""The report as CSV that Excel opens cleanly: UTF-8 with a BOM, CRLF, Chinese headers.

Names come from each HIS, so a cell that a spreadsheet would read as a
formula (starting with = + - @, a tab or a carriage return) is prefixed with an
apostrophe; quoting is the csv module's.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

from service.reports.schemas import Group

BOM = "\ufeff"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
SHORTFALL_LABELS = {"ratio": "预留比例不足", "senior_share": "高级职称占比不足", "lead_time": "提前开放不足"}

Cell = str | int | float | None
Row = dict[str, Any]  # a report row as the JSON answer has it (service.reports.service.Report)
Column = tuple[str, Callable[[Row], Cell]]


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _shortfall_detail(row: Row) -> str:
    counts = row["shortfalls"]
    return "; ".join(f"{label} {counts[kind]}天" for kind, label in SHORTFALL_LABELS.items() if counts[kind])


GROUP_COLUMNS: dict[Group, list[Column]] = {
    "hospital": [("医院", lambda r: r["hospital"]["name"] if r["hospital"] else None)],
    "department": [
        ("医院", lambda r: r["hospital"]["name"] if r["hospital"] else None),
        ("科室编码", lambda r: r["department"]["code"] if r["department"] else None),
        ("科室", lambda r: r["department"]["name"] if r["department"] else None),
    ],
    "region": [
        ("地区编码", lambda r: r["region"]["code"] if r["region"] else None),
        ("地区", lambda r: r["region"]["name"] if r["region"] else None),
    ],
    "alliance": [("医联体", lambda r: r["alliance"]["name"] if r["alliance"] else None)],
}

FIGURE_COLUMNS: list[Column] = [
    ("日期", lambda r: r["period"]),
    ("起始日期", lambda r: r["period_start"]),
    ("结束日期", lambda r: r["period_end"]),
    ("出诊号源数", lambda r: r["offered"]),
    ("预留号源数", lambda r: r["reserved"]),
    ("预留比例", lambda r: _ratio(r["reserved_ratio"])),
    ("高级职称预留数", lambda r: r["senior_reserved"]),
    ("高级职称占比", lambda r: _ratio(r["senior_share"])),
    ("基层预约数", lambda r: r["pool_bookings"]),
    ("退回公众数", lambda r: r["returned"]),
    ("取消数", lambda r: r["cancelled"]),
    ("就诊数", lambda r: r["attended"]),
    ("爽约数", lambda r: r["no_show"]),
    ("预留号源使用率", lambda r: _ratio(r["utilisation"])),
    ("上转占比", lambda r: _ratio(r["up_referral_share"])),
    ("未达标", lambda r: "是" if r["shortfall"] else "否"),
    ("未达标明细", _shortfall_detail),
    ("政策版本", lambda r: "; ".join(f"{p['code']} v{p['version']}" for p in r["policies"])),
]


def safe_cell(value: Cell) -> str:
    """A cell's text, defused if a spreadsheet would take it for a formula."""
    if value is None:
        return ""
    if isinstance(value, str):
        return "'" + value if value.startswith(_FORMULA_START) else value
    return str(value)


def report_csv(group: Group, rows: list[Row]) -> str:
    """The whole report as one CSV text, BOM first."""
    columns = GROUP_COLUMNS[group] + FIGURE_COLUMNS
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([name for name, _ in columns])
    for row in rows:
        writer.writerow([safe_cell(value(row)) for _, value in columns])
    return BOM + out.getvalue()
