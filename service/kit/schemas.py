"""The base of every API schema."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, field_validator

# NUL and lone UTF-16 surrogates (JSON's "\ud800"): PostgreSQL text can store neither, and the
# driver would fail on them deep inside a transaction instead of the caller hearing why.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _unstorable(value: Any) -> bool:
    """Whether any text in ``value`` (a string, or the keys and values of nested dicts and lists) is unstorable.

    A body's texts are gathered and searched at once: a push's 10,000 slots hold 100,000 of them.
    """
    if type(value) is str:
        return _UNSTORABLE.search(value) is not None
    texts: list[str] = []
    add = texts.append
    todo = [value]
    pop, push, extend = todo.pop, todo.append, todo.extend
    while todo:
        current = pop()
        kind = type(current)
        if kind is str:
            add(current)
        elif kind is dict:
            for key in current:
                if type(key) is str:
                    add(key)
                else:
                    push(key)
            extend(current.values())
        elif kind is list or kind is tuple:
            extend(current)
        elif current is None or kind is int or kind is bool or kind is float:
            continue
        elif isinstance(current, str):
            add(current)
        elif isinstance(current, dict):
            extend(current.keys())
            extend(current.values())
        elif isinstance(current, list | tuple):
            extend(current)
    return _text_unstorable("".join(texts))


def _text_unstorable(text: str) -> bool:
    """``_UNSTORABLE.search(text)``, faster on long texts: a surrogate is exactly what UTF-8 cannot encode."""
    if "\x00" in text:
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


class ApiModel(BaseModel):
    """Refuses NUL characters and lone surrogates anywhere: PostgreSQL text cannot store them.

    Each field is checked as it arrives, with everything inside it: a NUL deep in a nested
    object is an error at the outermost field that holds it.
    """

    @field_validator("*", mode="before")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        if _unstorable(value):
            raise ValueError("NUL characters and lone surrogates are not allowed")
        return value


class ApiPart(BaseModel):
    """A part of a request body (an item of a list, a nested object), never a body itself.

    The ``ApiModel`` field that holds it has checked its text already, all of it, so a part does
    not check again; in a push of 10,000 slots the check would otherwise run once per slot field,
    and for every enclosing level again. ``tests/test_operations.py`` holds every request body
    to be an ``ApiModel``.
    """
