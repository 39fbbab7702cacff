"""Bounds on the items of one bulk request: what one transaction should hold (docs/abuse-limits.md).

Bulk bodies declare their bound as ``maxItems`` in the contract but are checked here, so that
a request over it gets its own code, ``too_many_items``, and the numbers to split it by.
"""

from __future__ import annotations

from typing import Any

from service.kit.errors import Unprocessable


def max_items(limit: int) -> dict[str, Any]:
    """``json_schema_extra`` declaring a list's bound in the contract."""
    return {"maxItems": limit}


def refuse_if_too_many(what: str, count: int, limit: int) -> None:
    """422 ``too_many_items`` when a request carries more than ``limit`` of ``what``."""
    if count > limit:
        raise Unprocessable(
            "too_many_items",
            f"This request carries {count} {what}; one request takes at most {limit}. "
            "Split it into several requests of at most that many.",
            item=what,
            count=count,
            limit=limit,
        )
