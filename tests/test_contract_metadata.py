"""Every operation of the contract carries what tooling and readers need (docs/contract.md).

An endpoint added later fails here until it is declared with ``service.web.contract.operation``:
an explicit operationId, a hand-written summary, a description, its refusals as problem
responses listing their codes, and an example for every request and response body. The
examples themselves are checked against the schemas they illustrate.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from service.app import create_app
from service.kit.config import Settings
from service.web.contract import CODES, X_CODES

SERVICE = Path(__file__).resolve().parent.parent / "service"
# Public operations that take no input have nothing to refuse.
NOTHING_TO_REFUSE = {"getHealth", "getCapabilityStatement"}
PROBLEM_CLASSES = {
    "Problem",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "Unprocessable",
    "TooManyRequests",
    "BadSearch",
}


@pytest.fixture(scope="module")
def app() -> Any:
    return create_app(Settings(run_loops=False), database_url="postgresql://unused/unused", run_loops=False)


@pytest.fixture(scope="module")
def doc(app: Any) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(app.openapi()))
    return loaded


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, ops in doc["paths"].items() for method, op in ops.items()]


def published_routes(app: Any) -> list[APIRoute]:
    return [
        c.original_route
        for c in iter_route_contexts(app.routes)
        if isinstance(c.original_route, APIRoute) and c.original_route.include_in_schema
    ]


def undeclared(app: Any) -> list[str]:
    return [
        f"{sorted(r.methods)} {r.path}: operation_id={r.operation_id!r} summary={r.summary!r}"
        for r in published_routes(app)
        if not r.operation_id or not r.summary
    ]


def test_every_route_declares_its_operation_id_and_summary(app):
    """Given, not derived from the function name (``book_referral_v1_referrals_post``, "Book Referral")."""
    missing = undeclared(app)
    assert not missing, "declare these with service.web.contract.operation(...):\n" + "\n".join(missing)


def test_a_route_added_without_its_metadata_is_caught():
    """The check above fails for an endpoint someone adds without ``operation(...)``."""
    app = create_app(Settings(run_loops=False), database_url="postgresql://unused/unused", run_loops=False)

    @app.get("/v1/sandbox/clock")
    async def read_sandbox_clock() -> dict[str, str]:
        """A later endpoint."""
        return {}

    assert undeclared(app) == ["['GET'] /v1/sandbox/clock: operation_id=None summary=None"]
    doc = app.openapi()
    op = doc["paths"]["/v1/sandbox/clock"]["get"]
    assert op["operationId"] == "read_sandbox_clock_v1_sandbox_clock_get"  # what it would publish
    assert not [s for s in op["responses"] if int(s) >= 400]  # and no refusal


def test_operation_ids_are_readable_and_unique(doc):
    ids = [op["operationId"] for _, _, op in operations(doc)]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    unreadable = [i for i in ids if not re.fullmatch(r"[a-z][a-zA-Z0-9]{2,50}", i)]
    assert not unreadable, f"operationIds are lowerCamelCase verbs: {unreadable}"


def test_every_operation_has_a_summary_and_a_description(app, doc):
    generated = {r.name.replace("_", " ").title() for r in published_routes(app)}
    for method, path, op in operations(doc):
        where = f"{method.upper()} {path}"
        assert op.get("summary"), where
        assert op["summary"] not in generated, f"{where}: summary looks generated from the function name"
        assert len(op["summary"]) <= 80 and not op["summary"].endswith("."), where
        assert op.get("description", "").strip(), f"{where}: give the endpoint a docstring"


def test_refusals_are_problems_with_their_codes(doc):
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    for method, path, op in operations(doc):
        where = f"{method.upper()} {path} ({op['operationId']})"
        refusals = {s: r for s, r in op["responses"].items() if int(s) >= 400}
        if op["operationId"] in NOTHING_TO_REFUSE:
            continue
        assert refusals, f"{where}: no problem response"
        for status, response in refusals.items():
            codes = response.get(X_CODES)
            assert codes, f"{where} {status}: no {X_CODES}"
            unknown = [c for c in codes if c not in CODES]
            assert not unknown, f"{where} {status}: codes not in CODES: {unknown}"
            (media_type, media), *rest = response["content"].items()
            assert not rest, f"{where} {status}: one media type"
            fhir = path.startswith("/fhir/")
            assert media_type == ("application/fhir+json" if fhir else "application/problem+json"), where
            schema = "OperationOutcome" if fhir else "Problem"
            assert media["schema"] == {"$ref": f"#/components/schemas/{schema}"}, where
            assert sorted(media["examples"]) == sorted(codes), f"{where} {status}: one example per code"
        if op.get("security"):
            assert {"401", "403", "429"} <= set(refusals), f"{where}: the key's refusals"
        if op.get("requestBody") or op.get("parameters"):
            assert "400" in refusals or "422" in refusals, f"{where}: a malformed request's refusal"


def test_authenticated_operations_name_the_bearer_scheme(doc):
    scheme = doc["components"]["securitySchemes"]["bearerAuth"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    public = {"getHealth", "getReadiness", "getCapabilityStatement"}
    for method, path, op in operations(doc):
        if op["operationId"] in public:
            assert op["security"] == [], path
        else:
            assert op["security"] == [{"bearerAuth": []}], f"{method} {path}"
            assert op["x-roles"], path


def test_one_schema_per_name(doc):
    """FastAPI names two models of one name by their module path; client generators then drop one."""
    clashes = [name for name in doc["components"]["schemas"] if "__" in name]
    assert not clashes, f"give these schemas distinct class names: {clashes}"


def _is_binary(media: dict[str, Any]) -> bool:
    return media.get("schema", {}).get("format") == "binary"


def test_every_body_has_an_example(doc):
    missing = []
    for method, path, op in operations(doc):
        where = f"{method.upper()} {path}"
        for media_type, media in op.get("requestBody", {}).get("content", {}).items():
            if "example" not in media and "examples" not in media:
                missing.append(f"{where} request {media_type}")
        for status, response in op["responses"].items():
            for media_type, media in response.get("content", {}).items():
                if not _is_binary(media) and "example" not in media and "examples" not in media:
                    missing.append(f"{where} {status} {media_type}")
    assert not missing, "add them to service/web/examples.json:\n" + "\n".join(missing)


def test_examples_match_their_schemas(doc):
    registry = Registry().with_resource(
        "urn:contract",
        Resource.from_contents(
            {"$schema": "https://json-schema.org/draft/2020-12/schema", **doc},
        ),
    )

    def check(schema: dict[str, Any], value: Any, where: str) -> list[str]:
        rooted = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "urn:example", **schema}
        rooted = json.loads(json.dumps(rooted).replace('"#/components/', '"urn:contract#/components/'))
        validator = Draft202012Validator(rooted, registry=registry)
        return [f"{where} at {e.json_path}: {e.message[:200]}" for e in validator.iter_errors(value)]

    failures: list[str] = []
    for method, path, op in operations(doc):
        where = f"{method.upper()} {path}"
        for media_type, media in op.get("requestBody", {}).get("content", {}).items():
            if "example" in media:
                failures += check(media["schema"], media["example"], f"{where} request {media_type}")
        for status, response in op["responses"].items():
            for media_type, media in response.get("content", {}).items():
                if "json" not in media_type or "ndjson" in media_type:
                    continue
                values = [media["example"]] if "example" in media else []
                for named in media.get("examples", {}).values():
                    ref = named.get("$ref", "")
                    shared = doc["components"]["examples"].get(ref.removeprefix("#/components/examples/"))
                    values.append((shared or named)["value"])
                for value in values:
                    failures += check(media["schema"], value, f"{where} {status} {media_type}")
    assert not failures, "\n".join(failures)


def _raised_codes() -> set[str]:
    """Every code a Problem is raised with in the service's source, as a string literal."""
    codes: set[str] = set()
    for file in SERVICE.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            first = node.args[1] if name == "problem_response" and len(node.args) > 1 else node.args[0]
            if name in PROBLEM_CLASSES | {"problem_response", "_refuse", "outcome"} and isinstance(
                first, ast.Constant
            ):
                if isinstance(first.value, str):
                    codes.add(first.value)
    return codes


def test_every_code_the_service_raises_is_registered():
    """A new code needs its line in CODES (its status and meaning) before an operation can list it."""
    raised = _raised_codes()
    assert {"slot_taken", "webhook_url_refused", "sandbox_off"} <= raised  # the scan finds them
    # Answered outside any operation (an unknown path or method) or only on a bug.
    unroutable = {"not_found", "method_not_allowed", "http_error", "internal_error"}
    assert not sorted(raised - set(CODES) - unroutable)


async def test_docs_load_nothing_from_elsewhere(app):
    """/docs and /redoc work on an intranet: every asset they name is served by the app itself."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://slotpool.test") as client:
        for page in ("/docs", "/redoc"):
            r = await client.get(page)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert "cdn" not in r.text.lower() and "fonts.googleapis" not in r.text
            assets = re.findall(r'(?:src|href)="([^"]+)"', r.text)
            assert assets and all(a.startswith("/docs/assets/") for a in assets), assets
            for asset in assets:
                got = await client.get(asset)
                assert got.status_code == 200 and len(got.content) > 1000, asset
        ui = (await client.get("/docs/assets/swagger-ui-bundle.js")).text
        assert "isOAS31" in ui  # Swagger UI 5, which reads OpenAPI 3.1 (4.x shows a blank page for it)
        assert '"validatorUrl": null' in (await client.get("/docs")).text
