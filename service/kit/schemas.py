"""The base of every API schema."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, field_validator

# NUL and lone UTF-16 surrogates (JSON's "\ud800"): PostgreSQL text can store neither, and the
# driver would fail on them deep inside a transaction instead of the caller hearing why.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _unstorable(value: Any) -> bool:
    if isinstance(value, str):
        return _UNSTORABLE.search(value) is not None
    if isinstance(value, dict):
        return any(_unstorable(k) or _unstorable(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_unstorable(v) for v in value)
    return False


class ApiModel(BaseModel):
    """Refuses NUL characters and lone surrogates anywhere: PostgreSQL text cannot store them."""

    @field_validator("*", mode="before")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        if _unstorable(value):
            raise ValueError("NUL characters and lone surrogates are not allowed")
        return value
