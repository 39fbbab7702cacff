"""Resident identity numbers (居民身份证号码) per GB 11643-1999."""

from __future__ import annotations

import re
from datetime import date

WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
CHECK_CHARS = "10X98765432"
# First two digits: the province-level divisions of GB/T 2260 (plus 71/81/82 for Taiwan, HK, Macao).
PROVINCES = frozenset(
    "11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 50 51 52 53 54 "
    "61 62 63 64 65 71 81 82".split()
)
_SHAPE = re.compile(r"^[0-9]{17}[0-9X]$")


class InvalidIdNumber(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_char(first17: str) -> str:
    total = sum(int(d) * w for d, w in zip(first17, WEIGHTS, strict=True))
    return CHECK_CHARS[total % 11]


def normalise_id_number(raw: str, *, today: date | None = None) -> str:
    """Validate an 18-character ID and return it with an upper-case X; raise InvalidIdNumber."""
    value = raw.strip().upper()
    if len(value) != 18:
        raise InvalidIdNumber("length", "an ID number has 18 characters")
    if not _SHAPE.match(value):
        raise InvalidIdNumber("characters", "17 digits, then a digit or X")
    if value[:2] not in PROVINCES:
        raise InvalidIdNumber("region", "the first two digits are not a province code")
    try:
        born = date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        raise InvalidIdNumber("birth_date", "the birth date is not a real date") from None
    if born.year < 1900 or (today is not None and born > today):
        raise InvalidIdNumber("birth_date", "the birth date is out of range")
    if check_char(value[:17]) != value[17]:
        raise InvalidIdNumber("check_character", "the check character does not match")
    return value


def birth_date(id_number: str) -> date:
    return date(int(id_number[6:10]), int(id_number[10:12]), int(id_number[12:14]))
