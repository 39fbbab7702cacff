"""The published contract: what each operation is called and how it can refuse (docs/contract.md).

A route declares its metadata in one expression::

    @router.post("/referrals", status_code=201, **operation(
        "bookReferral", "Book a reserved slot for a signed resident",
        problems=["slot_taken", "not_signed", ...],
    ))

``operation`` gives FastAPI the explicit operationId, the summary and the route's own
non-problem responses (a 304, a PDF). ``finish_openapi`` then completes the document once,
for every route alike:

- every refusal is one ``Problem`` schema under ``application/problem+json``
  (``OperationOutcome`` under ``application/fhir+json`` for /fhir), one response per status,
  each listing its codes in ``x-problem-codes`` with an example per code;
- the codes every operation of a kind can meet are added here, not by hand: the API key's
  (401), the role and suspensions (403), the rate limit (429), a lock wait (409 ``busy``,
  writes), a malformed request (422 ``invalid_request``; ``date_out_of_range`` when a date is
  taken), a body over the limit (413), the database away (503);
- the bearer security scheme, and ``x-roles`` with the roles the operation admits;
- the request and response examples of ``examples.json``, keyed by operationId.

``tests/test_contract_metadata.py`` fails for an operation that lacks any of these.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

PROBLEM_JSON = "application/problem+json"
FHIR_JSON = "application/fhir+json"
X_CODES = "x-problem-codes"
X_DECLARED = "x-declared-problems"  # operation()'s codes, read and removed by finish_openapi
BEARER = "bearerAuth"

# Every stable code the service answers with: its usual status and what it means. A code may
# be declared with another status where the same condition is a different kind of fault
# (``(404, "region_not_found")``: a path names it, rather than a body).
CODES: dict[str, tuple[int, str]] = {
    # the caller and the request, added by finish_openapi
    "missing_credentials": (401, "No `Authorization: Bearer <API key>` header."),
    "invalid_credentials": (401, "The API key is not valid."),
    "key_revoked": (401, "The API key has been revoked."),
    "wrong_role": (403, "The operation is for other roles than the key's."),
    "client_suspended": (403, "The commission suspended or revoked this API client (R14)."),
    "institution_suspended": (403, "The commission suspended or revoked the key's institution (R14)."),
    "rate_limited": (429, "The client's request budget is spent; retry after `Retry-After` seconds."),
    "busy": (409, "A lock wait timed out; retry after `Retry-After` seconds."),
    "invalid_request": (422, "The request does not match the schema; `errors` says where."),
    "date_out_of_range": (422, "A date or instant is outside its window; `field` names it."),
    "payload_too_large": (413, "The body is larger than the limit (`limit_bytes`)."),
    "database_unavailable": (503, "The database is unavailable; retry after `Retry-After` seconds."),
    "invalid_search_parameter": (400, "A FHIR search parameter is malformed or unsupported."),
    "unsupported_search_prefix": (400, "A FHIR date prefix this server does not support."),
    # bulk bounds and cursors
    "too_many_items": (422, "More items than one request may carry; split it."),
    "invalid_cursor": (422, "The cursor is not one this server issued."),
    "naive_datetime": (422, "An instant without a UTC offset."),
    # booking (R5–R14)
    "not_signed": (422, "The resident has no contract in force with the referring doctor (R8)."),
    "name_mismatch": (422, "The name does not match the contract's declared name (R8)."),
    "invalid_id_number": (422, "The resident ID number is not a valid GB 11643 number."),
    "referring_doctor_unknown": (422, "The referring doctor is not one of the caller's family doctors."),
    "consultation_out_of_window": (422, "The consultation is too old or in the future (R9)."),
    "disease_not_covered": (422, "No diagnosis is on the policy's disease list (R10)."),
    "out_of_scope": (403, "The hospital's pool is not open to the caller (R7)."),
    "window_not_open": (409, "The pool window of the slot has not opened yet (R5)."),
    "window_closed": (409, "The slot has been returned to the public (R6)."),
    "slot_not_in_pool": (409, "The slot is not reserved for the pool."),
    "slot_taken": (409, "The slot is already booked."),
    "duplicate_referral": (409, "The resident already has a referral in that department that day."),
    "slot_not_found": (404, "No such slot."),
    "no_policy": (409, "The hospital has no policy in force for that kind of slot."),
    "resident_barred": (403, "The resident is barred from this hospital's pool for no-shows (R13)."),
    "doctor_suspended": (403, "The referring doctor's access is suspended or revoked (R14)."),
    "doctor_hourly_limit": (409, "The doctor's hourly booking limit is reached (R14)."),
    "doctor_daily_limit": (409, "The doctor's daily booking limit is reached (R14)."),
    "institution_share_limit": (409, "The institution's share of the department-day is reached (R14)."),
    "resident_active_limit": (409, "The resident's limit of active referrals is reached (R14)."),
    "idempotency_key_reused": (422, "The Idempotency-Key was used with another request body."),
    # the waiting list (docs/waitlist.md)
    "department_not_found": (404, "No such department at the hospital."),
    "waitlist_range_past": (422, "The entry's date range starts before today."),
    "urgent_priority_not_allowed": (422, "The hospital's policy gives urgent entries no priority."),
    "waitlist_entry_exists": (409, "The resident already waits for that hospital's department."),
    "waitlist_entry_not_found": (404, "No such waiting-list entry of the caller's."),
    "waitlist_entry_closed": (409, "The entry is no longer waiting."),
    "offer_not_found": (404, "No such waiting-list offer of the caller's."),
    "offer_closed": (409, "The offer was accepted, declined, withdrawn, or has expired or lapsed."),
    # referrals after booking
    "referral_not_found": (404, "No such referral visible to the caller."),
    "referral_cancelled": (409, "The referral is cancelled."),
    "already_cancelled": (409, "The referral is already cancelled."),
    "cancellation_closed": (409, "The policy's cancellation cut-off has passed (R12)."),
    "verification_failed": (422, "Unknown reference or wrong verification code."),
    "verification_locked": (429, "Too many failed verifications; retry after `Retry-After` seconds."),
    "too_early": (409, "Attendance is reported once the visit has begun."),
    "his_reference_conflict": (409, "The HIS reference is already given to another referral."),
    # sessions, slots and policies
    "session_not_found": (404, "No such session visible to the caller."),
    "hospital_not_found": (404, "No such hospital."),
    "policy_not_found": (422, "No such policy (in the body)."),
    "policy_of_another_region": (403, "The policy belongs to another region."),
    "policy_kind_changed": (422, "A new version of a policy code keeps its resource kind."),
    "policy_code_too_long": (422, "The region's copy of the shared code would be too long."),
    "policy_copy_taken": (409, "The region's copy of the shared policy code is taken."),
    # registry and residents
    "out_of_region": (403, "The object is outside the commission's region."),
    "region_not_found": (422, "No such region (in the body)."),
    "region_parent_missing": (422, "The region's parent is not known."),
    "region_out_of_scope": (403, "The region is outside the caller's."),
    "hospital_fields": (422, "A hospital needs its level and tier, and nothing of a primary institution."),
    "primary_fields": (422, "A primary institution needs its kind, and nothing of a hospital."),
    "organisation_exists": (409, "An organisation with that code exists."),
    "organisation_not_found": (404, "No such organisation in the caller's region."),
    "lead_not_hospital": (422, "An alliance is led by a hospital."),
    "alliance_not_found": (404, "No such alliance."),
    "role_not_allowed": (422, "That role is not one this organisation may have."),
    "contracts_platform_only": (403, "The region takes contracts from its signing platform only."),
    # supervision and signals
    "subject_not_found": (404, "No such doctor, institution or API client in the region."),
    "own_organisation": (422, "The commission cannot suspend itself."),
    "until_in_past": (422, "`until` is not in the future."),
    "already_suspended": (409, "The subject already has a suspension in force."),
    "suspension_not_found": (404, "No such suspension."),
    "already_reinstated": (409, "The suspension is already reinstated."),
    "alert_not_found": (404, "No such alert."),
    "identity_conflict_not_found": (404, "No such identity conflict."),
    "already_acknowledged": (409, "Already acknowledged."),
    "bar_not_found": (404, "No such no-show bar."),
    "bar_already_lifted": (409, "The bar is already lifted."),
    "bar_ended": (409, "The bar has already ended."),
    # reports and the feed
    "report_range_reversed": (422, "`from` is after `to`."),
    "report_range_too_long": (422, "The report's range is too long."),
    "region_outside": (403, "The region is outside the commission's."),
    "hospital_outside_region": (403, "The hospital is outside the commission's region."),
    "alliance_outside_region": (403, "The alliance is outside the commission's region."),
    "region_too_wide": (422, "Ask for a city or a county, not a province."),
    "invalid_date_range": (422, "`from` is after `to`."),
    "date_range_too_wide": (422, "The date range is too long for one request."),
    # webhooks
    "webhook_url_invalid": (422, "The webhook URL is not an absolute https URL."),
    "webhook_url_not_https": (422, "Webhook URLs use https."),
    "webhook_url_unresolvable": (422, "The webhook host does not resolve."),
    "webhook_url_refused": (422, "The webhook URL resolves to a non-public address."),
    "webhook_event_type_not_offered": (
        422,
        "An event type this organisation's endpoints cannot receive (a hospital's or a primary institution's).",
    ),
    "webhook_endpoint_not_found": (404, "No such webhook endpoint of this organisation."),
    "webhook_delivery_not_found": (404, "No such webhook delivery of this organisation."),
    "webhook_delivery_not_dead": (409, "Only dead letters are replayed."),
    # any path
    "not_found": (404, "Nothing is served at this path (FHIR: a type or bulk file not published)."),
    # the sandbox (docs/sandbox.md)
    "sandbox_off": (404, "This server is not a sandbox: its clock is the wall clock."),
    "clock_backwards": (409, "The sandbox clock only moves forward; `now` is where it stands."),
    # the bootstrap command (no HTTP operation answers these)
    "region_unknown": (422, "No such GB/T 2260 division."),
    "region_bootstrapped": (409, "The region is already bootstrapped."),
    # readiness
    "migrations_pending": (503, "The schema is behind this build: run `slotpool migrate`."),
    "schema_incompatible": (503, "The schema is ahead of what this build serves."),
}

Declared = str | tuple[int, str]


def operation(
    operation_id: str,
    summary: str,
    *,
    problems: Iterable[Declared] = (),
    responses: dict[int | str, dict[str, Any]] | None = None,
    **route: Any,
) -> dict[str, Any]:
    """Keyword arguments of a route decorator: its operationId, summary and the codes it may refuse
    with beyond those ``finish_openapi`` adds for every operation of its kind."""
    declared = [_pair(p) for p in problems]
    return {
        "operation_id": operation_id,
        "summary": summary,
        "responses": dict(responses or {}),
        "openapi_extra": {X_DECLARED: [[status, code] for status, code in declared]},
        **route,
    }


def _pair(problem: Declared) -> tuple[int, str]:
    status, code = problem if isinstance(problem, tuple) else (CODES[problem][0], problem)
    if code not in CODES:
        raise KeyError(f"{code}: add it to service.web.contract.CODES with its meaning")
    return status, code


# --- the Problem schema -----------------------------------------------------------------------

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details with a stable `code`. Members beyond these carry the "
    "numbers of some refusals (`retry_after`, `limit`, `current`, `bar_ends_on`, `limit_bytes`…).",
    "type": "object",
    "properties": {
        "type": {"type": "string", "description": "`urn:slotpool:problem:<code>`"},
        "title": {"type": "string", "description": "The HTTP status phrase."},
        "status": {"type": "integer"},
        "code": {"type": "string", "description": "Stable; the operation's response lists its codes."},
        "detail": {"type": "string", "description": "For people; may change."},
        "instance": {"type": "string", "description": "The request's path."},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "`invalid_request`, `date_out_of_range`: what did not match, and where.",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
                "required": ["loc", "msg", "type"],
            },
        },
        "field": {"type": "string", "description": "`date_out_of_range`: the field out of its window."},
        "retry_after": {"type": "integer", "description": "Seconds, also sent as `Retry-After`."},
    },
    "required": ["type", "title", "status", "code", "detail", "instance"],
    "additionalProperties": True,
}

OPERATION_OUTCOME_SCHEMA: dict[str, Any] = {
    "title": "OperationOutcome",
    "description": "A FHIR R4 OperationOutcome; `issue[0].details.coding[0].code` is the stable code.",
    "type": "object",
    "properties": {
        "resourceType": {"const": "OperationOutcome"},
        "issue": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "severity": {"type": "string"},
                    "code": {"type": "string"},
                    "details": {
                        "type": "object",
                        "properties": {
                            "coding": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {"system": {"type": "string"}, "code": {"type": "string"}},
                                    "required": ["code"],
                                },
                            },
                            "text": {"type": "string"},
                        },
                    },
                    "diagnostics": {"type": "string"},
                },
                "required": ["severity", "code"],
            },
        },
    },
    "required": ["resourceType", "issue"],
}

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    503: "Service Unavailable",
}
_ISSUE_TYPES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 409: "conflict"}


def problem_example(status: int, code: str, path: str) -> dict[str, Any]:
    """What a refusal with ``code`` looks like, as the error handlers render it."""
    return {
        "type": f"urn:slotpool:problem:{code}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "code": code,
        "detail": CODES[code][1],
        "instance": path,
        "request_id": "4f0c8e1d9a6b4d2e",
    }


def outcome_example(status: int, code: str) -> dict[str, Any]:
    detail = CODES[code][1]
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error" if status < 500 else "fatal",
                "code": _ISSUE_TYPES.get(status, "processing"),
                "details": {"coding": [{"system": "urn:slotpool:problem", "code": code}], "text": detail},
                "diagnostics": detail,
            }
        ],
    }


# --- what finish_openapi learns from a route ------------------------------------------------


def unit_of(route: APIRoute) -> tuple[tuple[str, ...], bool] | None:
    """The roles and write flag of the route's ``writes``/``reads`` dependency, if it has one."""
    for dependant in _walk(route.dependant):
        unit = getattr(dependant.call, "slotpool_unit", None)
        if unit is not None:
            roles, write = unit
            return tuple(roles), bool(write)
    return None


def _walk(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _walk(sub)


def _takes_input(route: APIRoute) -> bool:
    return any(
        d.path_params or d.query_params or d.header_params or d.cookie_params for d in _walk(route.dependant)
    ) or (route.body_field is not None)


def _mentions_dates(node: Any, schemas: dict[str, Any], seen: set[str]) -> bool:
    if isinstance(node, dict):
        if node.get("format") in ("date", "date-time"):
            return True
        ref = node.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            if name in seen:
                return False
            seen.add(name)
            return _mentions_dates(schemas.get(name), schemas, seen)
        return any(_mentions_dates(v, schemas, seen) for v in node.values())
    if isinstance(node, list):
        return any(_mentions_dates(v, schemas, seen) for v in node)
    return False


def automatic_problems(route: APIRoute, op: dict[str, Any], schemas: dict[str, Any]) -> list[tuple[int, str]]:
    """The codes every operation of this route's kind can meet."""
    problems: list[tuple[int, str]] = []
    fhir = getattr(route, "problem_media_type", PROBLEM_JSON) == FHIR_JSON
    unit = unit_of(route)
    if unit is not None:
        roles, write = unit
        problems += [(401, "missing_credentials"), (401, "invalid_credentials"), (401, "key_revoked")]
        if roles:
            problems.append((403, "wrong_role"))
        problems += [(403, "client_suspended"), (403, "institution_suspended"), (429, "rate_limited")]
        if write:
            problems.append((409, "busy"))
        problems.append((503, "database_unavailable"))
    if _takes_input(route):
        if fhir:
            problems.append((400, "invalid_search_parameter"))
        else:
            problems.append((422, "invalid_request"))
            inputs = [op.get("parameters", []), op.get("requestBody", {})]
            if _mentions_dates(inputs, schemas, set()):
                problems.append((422, "date_out_of_range"))
    if route.body_field is not None:
        problems.append((413, "payload_too_large"))
    return problems


# --- finishing the document -------------------------------------------------------------------


@cache
def examples() -> dict[str, Any]:
    """The request and response examples, keyed by operationId (``service/web/examples.json``)."""
    text = resources.files("service.web").joinpath("examples.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _problem_response(status: int, codes: Sequence[str], fhir: bool) -> dict[str, Any]:
    media = FHIR_JSON if fhir else PROBLEM_JSON
    schema = "OperationOutcome" if fhir else "Problem"

    prefix = "outcome" if fhir else "problem"
    listed = ", ".join(f"`{code}`" for code in codes)
    return {
        # Each code's meaning is its example's summary (components/examples).
        "description": f"{_TITLES.get(status, 'Refused')}: {listed}.",
        "content": {
            media: {
                "schema": {"$ref": f"#/components/schemas/{schema}"},
                "examples": {
                    code: {"$ref": f"#/components/examples/{prefix}-{status}-{code}"} for code in codes
                },
            }
        },
        X_CODES: list(codes),
    }


def _attach_examples(op: dict[str, Any]) -> None:
    given = examples().get(op["operationId"], {})
    body = op.get("requestBody", {}).get("content", {})
    for media in body.values():
        if "request" in given:
            media["example"] = given["request"]
    answers = given.get("responses", {})
    for status, response in op.get("responses", {}).items():
        # "200" is the example of the response's first media type; "200 text/csv" names another.
        for i, (media_type, media) in enumerate(response.get("content", {}).items()):
            key = status if i == 0 else f"{status} {media_type}"
            if key in answers or f"{status} {media_type}" in answers:
                media["example"] = answers.get(f"{status} {media_type}", answers.get(key))


def finish_openapi(app: FastAPI, doc: dict[str, Any]) -> dict[str, Any]:
    """Complete FastAPI's document as the module docstring says; ``doc`` is changed and returned."""
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    shared: dict[str, Any] = {}
    routes = {
        (str(context.path_format), method.lower()): context.original_route
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute) and context.original_route.include_in_schema
        for method in context.original_route.methods or ()
    }
    for path, methods in doc.get("paths", {}).items():
        for method, op in methods.items():
            route = routes[(path, method)]
            declared = [(int(s), str(c)) for s, c in op.pop(X_DECLARED, [])]
            fhir = getattr(route, "problem_media_type", PROBLEM_JSON) == FHIR_JSON
            problems = automatic_problems(route, op, schemas) + declared
            by_status: dict[int, list[str]] = {}
            for status, code in problems:
                codes = by_status.setdefault(status, [])
                if code not in codes:
                    codes.append(code)
            responses = op.setdefault("responses", {})
            for status in list(responses):
                if status.isdigit() and int(status) >= 400:
                    del responses[status]  # FastAPI's HTTPValidationError, or a bare placeholder
            for status in sorted(by_status):
                responses[str(status)] = _problem_response(status, by_status[status], fhir)
                for code in by_status[status]:
                    # One example per code for the whole document, referenced by every response.
                    if fhir:
                        value = outcome_example(status, code)
                        shared[f"outcome-{status}-{code}"] = {"summary": CODES[code][1], "value": value}
                    else:
                        value = problem_example(status, code, "/v1/referrals")
                        shared[f"problem-{status}-{code}"] = {"summary": CODES[code][1], "value": value}
            unit = unit_of(route)
            if unit is not None:
                op["security"] = [{BEARER: []}]
                roles = list(unit[0]) or ["any"]
                op["x-roles"] = roles
                who = ", ".join(roles)
                op["description"] = f"{op.get('description', '').rstrip()}\n\n**Roles:** {who}.".lstrip()
            else:
                op["security"] = []
            _attach_examples(op)
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["Problem"] = PROBLEM_SCHEMA
    schemas["OperationOutcome"] = OPERATION_OUTCOME_SCHEMA
    components["schemas"] = dict(sorted(schemas.items()))
    components["examples"] = dict(sorted(shared.items()))
    components["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key issued by `slotpool create-client`: one organisation, one role. "
            "Send it as `Authorization: Bearer <key>`.",
        }
    }
    return doc
