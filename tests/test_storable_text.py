"""NUL characters and lone surrogates are refused in every request body, at the outermost field.

``ApiModel`` checks each field's whole value, so the parts of a body (``ApiPart``: a push's
sessions and slots) need no check of their own; that holds only while every request body is
an ``ApiModel``.
"""

from __future__ import annotations

from datetime import date
from typing import Any, get_args, get_origin

from fastapi.routing import APIRoute
from hypothesis import given
from hypothesis import strategies as st

from service.kit.schemas import _UNSTORABLE, ApiModel, ApiPart, _unstorable
from tests.factories import session_item


def _reference(value: Any) -> bool:
    """The check as first written: every string, and every key and value of nested dicts and lists."""
    if isinstance(value, str):
        return _UNSTORABLE.search(value) is not None
    if isinstance(value, dict):
        return any(_reference(k) or _reference(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_reference(v) for v in value)
    return False


texts = st.text(alphabet=st.sampled_from(["a", "号", "\x00", "\ud800", "\udfff", "\U0001f600", "\\", "u"]))
leaves = texts | st.integers() | st.booleans() | st.none() | st.floats(allow_nan=False)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=30,
)


@given(values)
def test_the_gathered_check_finds_what_the_walk_finds(value):
    assert _unstorable(value) == _reference(value)


def api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every endpoint, through the routers the app includes."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += api_routes(route.original_router.routes)
    return found


def test_every_request_body_is_an_api_model(app):
    bodies = {
        (route.path, tuple(route.methods)): route.body_field.field_info.annotation
        for route in api_routes(app.routes)
        if route.body_field is not None
    }
    assert ("/v1/hospital/sessions", ("POST",)) in bodies
    for path, body in bodies.items():
        # An optional body is its model or nothing.
        models = [arg for arg in get_args(body) if arg is not type(None)] if get_origin(body) else [body]
        for model in models:
            assert isinstance(model, type) and issubclass(model, ApiModel), (path, body)
            assert not issubclass(model, ApiPart), (path, body)


async def test_nul_deep_in_a_slot_is_refused_at_the_push_field(client, world):
    item = session_item("S1", date(2026, 3, 10), slots=3)
    item["slots"][2]["external_id"] = "S1-\x00"
    r = await client.post(
        "/v1/hospital/sessions", json={"sessions": [item]}, headers=world.auth("city_hospital")
    )
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "invalid_request"
    assert [(e["loc"], e["type"]) for e in body["errors"]] == [(["body", "sessions"], "value_error")]


async def test_a_lone_surrogate_in_a_slot_is_refused_too(client, world):
    item = session_item("S1", date(2026, 3, 10), slots=2)
    item["department"]["name"] = "心\ud800"
    import json

    r = await client.post(
        "/v1/hospital/sessions",
        content=json.dumps({"sessions": [item]}),  # ensure_ascii keeps the surrogate as its escape
        headers={**world.auth("city_hospital"), "content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["errors"]] == [["body", "sessions"]]
