"""GB/T 2260 codes: ``PPCCDD`` for province, city (prefecture) and county/district."""

from __future__ import annotations

from sqlalchemy import ColumnElement, SQLColumnExpression


def city_of(code: str) -> str:
    return code[:4] + "00"


def province_of(code: str) -> str:
    return code[:2] + "0000"


def significant_prefix(code: str) -> str:
    """The part of a code that names its division: '34' for 340000, '3401' for 340100."""
    if code.endswith("0000"):
        return code[:2]
    if code.endswith("00"):
        return code[:4]
    return code


def covers(area: str, code: str) -> bool:
    """Whether the division ``area`` contains (or is) the division ``code``."""
    return code.startswith(significant_prefix(area))


def within(column: SQLColumnExpression[str], area: str) -> ColumnElement[bool]:
    """SQL for ``covers(area, column)``: the region code in ``column`` lies in the division ``area``."""
    return column.startswith(significant_prefix(area), autoescape=True)
