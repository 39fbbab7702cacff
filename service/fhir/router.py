"""Read-only FHIR R4 endpoints under /fhir, and the SMART Scheduling Links bulk publication.

Everything under /fhir answers ``application/fhir+json`` and reports errors as
OperationOutcome resources with the HTTP status /v1 would use; the issue's
``details.coding`` carries the same stable code as /v1's problem+json.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.fhir import resources, service
from service.fhir.bulk import TYPES, BulkPublication, Generation
from service.fhir.search import (
    DEFAULT_COUNT,
    MAX_COUNT,
    BadSearch,
    decode_cursor,
    parse_date,
    parse_reference,
    parse_service_types,
    parse_tokens,
)
from service.fhir.validation import checked
from service.kit.cursors import encode_cursor
from service.kit.errors import NotFound, Problem, as_problem, log_failure
from service.kit.version import VERSION
from service.web.contract import operation
from service.web.state import State
from service.web.unit import Unit, UnitRoute, reads, writes

FHIR_JSON = "application/fhir+json"
FHIR_NDJSON = "application/fhir+ndjson"
log = structlog.get_logger("slotpool.fhir")


class FhirJSONResponse(Response):
    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def outcome(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> FhirJSONResponse:
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return FhirJSONResponse(
        checked(resources.operation_outcome(status, code, detail)),
        status_code=status,
        headers=headers or None,
    )


class FhirRoute(UnitRoute):
    """A route run in its unit of work (``UnitRoute``) that turns every error, its dependencies'
    and its unit's included, into an OperationOutcome."""

    problem_media_type = FHIR_JSON  # how service/web/contract.py documents its refusals

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def fhir_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except Problem as exc:
                return outcome(exc.status, exc.code, exc.detail, exc.headers)
            except RequestValidationError as exc:
                where = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()
                )
                return outcome(400, "invalid_search_parameter", where or "The request is not valid.")
            except StarletteHTTPException as exc:
                return outcome(exc.status_code, "http_error", str(exc.detail))
            except Exception as exc:
                log_failure(log, "unhandled error", exc, route=self.path)
                problem = as_problem(exc)
                return outcome(problem.status, problem.code, problem.detail, problem.headers)

        return fhir_handler


router = APIRouter(
    prefix="/fhir", tags=["fhir"], route_class=FhirRoute, default_response_class=FhirJSONResponse
)
# Searches of the pool's Locations, Schedules and Slots show no personal data and record nothing.
Reader = Annotated[Unit, reads("hospital", "primary", "platform", "commission")]
# Every read of an Appointment (a referral) is recorded in the audit trail (R15).
Referrer = Annotated[Unit, writes("hospital", "primary")]
Publisher = Annotated[Unit, reads("platform", "commission")]
Count = Annotated[int, Query(alias="_count", ge=1, le=MAX_COUNT, description="Page size.")]
Cursor = Annotated[str | None, Query(alias="_cursor", max_length=100, description="From Bundle.link next.")]
Dates = Annotated[list[str] | None, Query(max_length=10, description="FHIR date: eq|ge|gt|le|lt prefix.")]
ServiceTypes = Annotated[
    list[str] | None,
    Query(
        alias="service-type",
        max_length=10,
        description="Token: a resource kind (outpatient, examination, bed) or a modality (CT, MRI, ...), "
        "optionally system|code; comma = OR, repeated = AND.",
    ),
]


def fhir_ok(resource_type: str) -> dict[str, Any]:
    """The 200 of a FHIR read: a resource of ``resource_type`` (a searchset Bundle for a search)."""
    schema = {
        "type": "object",
        "description": f"A FHIR R4 {resource_type} (https://hl7.org/fhir/R4/).",
        "properties": {"resourceType": {"const": resource_type}},
        "required": ["resourceType"],
    }
    return {"description": f"A FHIR {resource_type}.", "content": {FHIR_JSON: {"schema": schema}}}


def fhir_base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


def searchset(
    request: Request, now: datetime, page: tuple[list[dict[str, Any]], int | None]
) -> FhirJSONResponse:
    """A Bundle of one page; the next link repeats the search with the opaque cursor."""
    entries, next_after = page
    next_url = None
    if next_after is not None:
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "_cursor"]
        params.append(("_cursor", encode_cursor(next_after)))
        next_url = f"{fhir_base(request)}{request.url.path.removeprefix('/fhir')}?{urlencode(params)}"
    body = resources.bundle(
        entries=[checked(e) for e in entries],
        base=fhir_base(request),
        self_url=str(request.url),
        next_url=next_url,
        now=now,
    )
    return FhirJSONResponse(checked(body))


# A resource that is not there, or not the caller's, answers /v1's code for the object it shows
# (docs/fhir.md): a Location is a hospital, a Schedule a clinic session, an Appointment a referral.
NOT_FOUND_CODES = {
    "Location": "hospital_not_found",
    "Schedule": "session_not_found",
    "Slot": "slot_not_found",
    "Appointment": "referral_not_found",
}


def not_found(resource_type: str, ref: str) -> NotFound:
    return NotFound(NOT_FOUND_CODES[resource_type], f"No {resource_type}/{ref} visible to you.")


def single(page: tuple[list[dict[str, Any]], int | None], resource_type: str, ref: str) -> FhirJSONResponse:
    entries, _ = page
    if not entries:
        raise not_found(resource_type, ref)
    return FhirJSONResponse(checked(entries[0]))


def path_id(resource_type: str, value: str) -> int:
    try:
        return parse_reference("id", value, resource_type)
    except BadSearch as exc:
        raise not_found(resource_type, value) from exc


Page = tuple[list[dict[str, Any]], int | None]


async def _pools(unit: Unit) -> list[service.Pool]:
    """The pools the caller may read, at the unit's clock reading."""
    return await service.visible_pools(session=unit.session, caller=unit.caller, now=unit.now)


@router.get(
    "/metadata",
    **operation(
        "getCapabilityStatement",
        "The server's CapabilityStatement",
        responses={200: fhir_ok("CapabilityStatement")},
    ),
)
async def metadata(request: Request, state: State) -> FhirJSONResponse:
    """The CapabilityStatement: FHIR R4, read and search only, JSON only."""
    # Public (no API key), so it has no unit of work; it only reads the shared clock.
    return FhirJSONResponse(checked(capability_statement(fhir_base(request), state.clock.now())))


# --- Location -----------------------------------------------------------------------------


@router.get(
    "/Location",
    **operation(
        "searchLocations",
        "Search hospitals as Locations",
        responses={200: fhir_ok("Bundle")},
        problems=[(400, "invalid_cursor")],
    ),
)
async def search_locations(
    request: Request,
    unit: Reader,
    count: Count = DEFAULT_COUNT,
    cursor: Cursor = None,
    _id: Annotated[str | None, Query(alias="_id", max_length=30)] = None,
) -> FhirJSONResponse:
    """Hospitals the caller may read, as Locations."""
    location_id = parse_reference("_id", _id, "Location") if _id is not None else None
    after = decode_cursor(cursor)
    page = await service.search_locations(
        session=unit.session, pools=await _pools(unit), location_id=location_id, after=after, count=count
    )
    return searchset(request, unit.now, page)


@router.get(
    "/Location/{location_id}",
    **operation(
        "readLocation",
        "Read a Location",
        responses={200: fhir_ok("Location")},
        problems=["hospital_not_found"],
    ),
)
async def read_location(location_id: str, unit: Reader) -> FhirJSONResponse:
    wanted = path_id("Location", location_id)
    page = await service.search_locations(
        session=unit.session, pools=await _pools(unit), location_id=wanted, count=1
    )
    return single(page, "Location", location_id)


# --- Schedule -----------------------------------------------------------------------------


@router.get(
    "/Schedule",
    **operation(
        "searchSchedules",
        "Search sessions as Schedules",
        responses={200: fhir_ok("Bundle")},
        problems=[(400, "invalid_cursor"), "unsupported_search_prefix"],
    ),
)
async def search_schedules(
    request: Request,
    unit: Reader,
    actor: Annotated[str | None, Query(max_length=100, description="Location/<id>")] = None,
    active: bool | None = None,
    date: Dates = None,
    service_type: ServiceTypes = None,
    count: Count = DEFAULT_COUNT,
    cursor: Cursor = None,
) -> FhirJSONResponse:
    """One Schedule per clinic session, of every kind; ``date`` matches the session's day."""
    location_id = parse_reference("actor", actor, "Location") if actor is not None else None
    dates = [parse_date("date", d) for d in date or []]
    services = parse_service_types("service-type", service_type)
    after = decode_cursor(cursor)
    page = await service.search_schedules(
        session=unit.session,
        pools=await _pools(unit),
        location_id=location_id,
        active=active,
        dates=dates,
        services=services,
        after=after,
        count=count,
    )
    return searchset(request, unit.now, page)


@router.get(
    "/Schedule/{schedule_id}",
    **operation(
        "readSchedule",
        "Read a Schedule",
        responses={200: fhir_ok("Schedule")},
        problems=["session_not_found"],
    ),
)
async def read_schedule(schedule_id: str, unit: Reader) -> FhirJSONResponse:
    wanted = path_id("Schedule", schedule_id)
    page = await service.search_schedules(
        session=unit.session, pools=await _pools(unit), schedule_id=wanted, count=1
    )
    return single(page, "Schedule", schedule_id)


# --- Slot ---------------------------------------------------------------------------------


@router.get(
    "/Slot",
    **operation(
        "searchFhirSlots",
        "Search Slots with their status",
        responses={200: fhir_ok("Bundle")},
        problems=[(400, "invalid_cursor"), "unsupported_search_prefix"],
    ),
)
async def search_slots(
    request: Request,
    unit: Reader,
    schedule: Annotated[str | None, Query(max_length=100, description="Schedule/<id>")] = None,
    start: Dates = None,
    status: Annotated[str | None, Query(max_length=100, description="free,busy,busy-unavailable")] = None,
    service_type: ServiceTypes = None,
    count: Count = DEFAULT_COUNT,
    cursor: Cursor = None,
) -> FhirJSONResponse:
    """Slots with their status as of now: free = bookable through the pool right now."""
    schedule_id = parse_reference("schedule", schedule, "Schedule") if schedule is not None else None
    starts = [parse_date("start", s) for s in start or []]
    statuses = parse_tokens("status", status, resources.SLOT_STATUSES)
    services = parse_service_types("service-type", service_type)
    after = decode_cursor(cursor)
    page = await service.search_slots(
        session=unit.session,
        pools=await _pools(unit),
        now=unit.now,
        schedule_id=schedule_id,
        starts=starts,
        statuses=statuses,
        services=services,
        after=after,
        count=count,
    )
    return searchset(request, unit.now, page)


@router.get(
    "/Slot/{slot_id}",
    **operation("readSlot", "Read a Slot", responses={200: fhir_ok("Slot")}, problems=["slot_not_found"]),
)
async def read_slot(slot_id: str, unit: Reader) -> FhirJSONResponse:
    wanted = path_id("Slot", slot_id)
    page = await service.search_slots(
        session=unit.session, pools=await _pools(unit), now=unit.now, slot_id=wanted, count=1
    )
    return single(page, "Slot", slot_id)


# --- Appointment --------------------------------------------------------------------------


async def _appointments(unit: Unit, **filters: Any) -> Page:
    return await service.search_appointments(
        session=unit.session, actor=unit.actor, caller=unit.caller, crypto=unit.crypto, **filters
    )


@router.get(
    "/Appointment",
    **operation(
        "searchAppointments",
        "Search referrals as Appointments",
        responses={200: fhir_ok("Bundle")},
        problems=[(400, "invalid_cursor"), "unsupported_search_prefix"],
    ),
)
async def search_appointments(
    request: Request,
    unit: Referrer,
    status: Annotated[str | None, Query(max_length=100, description="booked,cancelled")] = None,
    date: Dates = None,
    slot: Annotated[str | None, Query(max_length=100, description="Slot/<id>")] = None,
    count: Count = DEFAULT_COUNT,
    cursor: Cursor = None,
) -> FhirJSONResponse:
    """Referrals the caller made (primary) or receives (hospital), as Appointments."""
    page = await _appointments(
        unit,
        reference=None,
        statuses=parse_tokens("status", status, ("booked", "cancelled")),
        dates=[parse_date("date", d) for d in date or []],
        slot_id=parse_reference("slot", slot, "Slot") if slot is not None else None,
        after=decode_cursor(cursor),
        count=count,
    )
    return searchset(request, unit.now, page)


@router.get(
    "/Appointment/{reference}",
    **operation(
        "readAppointment",
        "Read a referral as an Appointment",
        responses={200: fhir_ok("Appointment")},
        problems=["referral_not_found"],
    ),
)
async def read_appointment(
    reference: Annotated[str, Path(max_length=64)], unit: Referrer
) -> FhirJSONResponse:
    """One referral, to the referring institution or the receiving hospital only."""
    page = await _appointments(unit, reference=reference, count=1)
    return single(page, "Appointment", reference)


# --- bulk publication -----------------------------------------------------------------------


BULK_MANIFEST = {
    "type": "object",
    "properties": {
        "transactionTime": {"type": "string", "format": "date-time"},
        "request": {"type": "string"},
        "requiresAccessToken": {"type": "boolean"},
        "output": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"type": {"type": "string"}, "url": {"type": "string"}},
                "required": ["type", "url"],
            },
        },
        "error": {"type": "array", "items": {}},
    },
    "required": ["transactionTime", "request", "requiresAccessToken", "output", "error"],
}


def _publication(request: Request) -> BulkPublication:
    publication: BulkPublication | None = getattr(request.app.state, "fhir_bulk", None)
    if publication is None:
        publication = request.app.state.fhir_bulk = BulkPublication()
    return publication


def _not_modified(request: Request, generation: Generation) -> bool:
    tags = [t.strip() for t in request.headers.get("if-none-match", "").split(",")]
    return f'"{generation.etag}"' in tags or "*" in tags


async def _generation(request: Request, unit: Unit) -> Generation:
    return await _publication(request).current(
        session=unit.session, now=unit.now, region_code=unit.caller.region_code
    )


@router.get(
    "/$bulk-publish",
    response_class=Response,
    **operation(
        "getBulkManifest",
        "SMART Scheduling Links manifest of the region",
        responses={
            200: {"description": "The manifest.", "content": {"application/json": {"schema": BULK_MANIFEST}}},
            304: {"description": "Unchanged since the ETag sent."},
        },
    ),
)
async def bulk_manifest(request: Request, unit: Publisher) -> Response:
    """SMART Scheduling Links manifest of the caller's region's open pool availability."""
    generation = await _generation(request, unit)
    headers = {"ETag": f'"{generation.etag}"', "Cache-Control": "no-cache"}
    if _not_modified(request, generation):
        return Response(status_code=304, headers=headers)
    base = fhir_base(request)
    manifest = {
        "transactionTime": resources.utc_instant(generation.transaction_time),
        "request": str(request.url),
        "requiresAccessToken": True,
        "output": [{"type": t, "url": f"{base}/bulk/{t}.ndjson"} for t in TYPES],
        "error": [],
    }
    return FhirJSONResponse(manifest, headers=headers, media_type="application/json")


@router.get(
    "/bulk/{resource_type}.ndjson",
    response_class=Response,
    **operation(
        "getBulkFile",
        "One NDJSON file of the bulk publication",
        responses={
            200: {
                "description": "One FHIR resource per line.",
                "content": {FHIR_NDJSON: {"schema": {"type": "string"}}},
            },
            304: {"description": "Unchanged."},
        },
        problems=["not_found"],
    ),
)
async def bulk_file(resource_type: str, request: Request, unit: Publisher) -> Response:
    """One NDJSON file of the current generation; its ETag is the manifest's."""
    if resource_type not in TYPES:  # as any other path this server does not serve
        raise NotFound("not_found", f"No bulk file for {resource_type}.")
    generation = await _generation(request, unit)
    headers = {"ETag": f'"{generation.etag}"', "Cache-Control": "no-cache"}
    if _not_modified(request, generation):
        return Response(status_code=304, headers=headers)
    return Response(generation.files[resource_type], media_type=FHIR_NDJSON, headers=headers)


@router.api_route(
    "/{rest:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    include_in_schema=False,
)
async def unsupported(rest: str, request: Request) -> FhirJSONResponse:
    """Anything else under /fhir: an OperationOutcome, never problem+json."""
    if request.method != "GET":
        return outcome(
            405, "method_not_allowed", "This FHIR server is read-only; book through POST /v1/referrals."
        )
    return outcome(404, "not_found", f"No FHIR endpoint at /fhir/{rest}.")


# --- CapabilityStatement ------------------------------------------------------------------

SERVICE_TYPE_DOC = "Resource kind (outpatient|examination|bed, or ActCode AMB|IMP) or modality (CT, MRI, ..., or its DICOM code)"
_SEARCH: dict[str, list[tuple[str, str, str]]] = {
    "Location": [("_id", "token", "Logical id")],
    "Schedule": [
        ("actor", "reference", "Location/<id>"),
        ("active", "token", "true|false"),
        ("date", "date", "The session's day (Beijing time)"),
        ("service-type", "token", SERVICE_TYPE_DOC),
    ],
    "Slot": [
        ("schedule", "reference", "Schedule/<id>"),
        ("start", "date", "Slot start; repeat with ge/le for a range"),
        ("status", "token", "free|busy|busy-unavailable, comma-separated"),
        ("service-type", "token", SERVICE_TYPE_DOC),
    ],
    "Appointment": [
        ("status", "token", "booked|cancelled"),
        ("date", "date", "Appointment start"),
        ("slot", "reference", "Slot/<id>"),
    ],
}


def capability_statement(base: str, now: datetime) -> dict[str, Any]:
    common = [("_count", "number", "Page size"), ("_cursor", "string", "Opaque; from the next link")]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": resources.utc_instant(now),
        "publisher": "slotpool",
        "kind": "instance",
        "software": {"name": "slotpool", "version": VERSION},
        "implementation": {"description": "Referral slot pool: read-only scheduling views", "url": base},
        "fhirVersion": resources.FHIR_VERSION,
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "Bearer API keys as for /v1. Booking: POST /v1/referrals with the Slot id.",
                "security": {"description": "Authorization: Bearer <API key>; scope per client role."},
                "resource": [
                    {
                        "type": kind,
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "searchParam": [
                            {"name": name, "type": kind_, "documentation": doc}
                            for name, kind_, doc in [*params, *common]
                        ],
                    }
                    for kind, params in _SEARCH.items()
                ],
                "operation": [
                    {
                        "name": "bulk-publish",
                        "definition": f"{resources.BASE}/OperationDefinition/bulk-publish",
                    }
                ],
            }
        ],
    }
