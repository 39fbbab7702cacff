"""Opaque keyset cursors: the sort key of the last item of a page, for the next page."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Query

from service.kit.errors import Unprocessable
from service.kit.ids import MAX_ID

T = TypeVar("T")

CursorQuery = Annotated[
    str | None,
    Query(max_length=200, pattern=r"^[A-Za-z0-9_-]+$", description="next_cursor of the previous page"),
]


def encode_cursor(*parts: str | int) -> str:
    """Pack a sort key into a URL-safe token; clients treat it as opaque."""
    raw = json.dumps(list(parts), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, parse: Callable[[list[Any]], T]) -> T:
    """Unpack a token made by ``encode_cursor``; anything else is a 422 ``invalid_cursor``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = json.loads(raw)
        if not isinstance(parts, list):
            raise ValueError("not a cursor")
        return parse(parts)
    except (ValueError, TypeError, IndexError, binascii.Error, UnicodeDecodeError):
        raise Unprocessable("invalid_cursor", "The cursor is not one this service issued.") from None


def cursor_id(value: Any) -> int:
    """A database id inside a cursor: a positive bigint."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise ValueError("not an id")
    return value


def _single_id(parts: list[Any]) -> int:
    [value] = parts  # anything but exactly one part is a ValueError, hence not a cursor
    return cursor_id(value)


def decode_id_cursor(cursor: str | None) -> int | None:
    """The id a page ended on, for lists paged by id alone; None for the first page."""
    return decode_cursor(cursor, _single_id) if cursor is not None else None
