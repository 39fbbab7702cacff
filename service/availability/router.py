"""GET /v1/availability: a platform polls a city's counts, revalidates with ETags, follows a cursor."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from service.availability import service
from service.availability.schemas import AvailabilityOut
from service.kit.bounds import Day
from service.kit.errors import Forbidden
from service.kit.ids import QueryId
from service.kit.regions import covers
from service.kit.resources import Modality, ResourceKind
from service.web.contract import operation
from service.web.unit import Unit, UnitRoute, reads

router = APIRouter(prefix="/v1", tags=["availability"], route_class=UnitRoute)
CACHE_CONTROL = "private, no-cache"  # per-client scope; always revalidate (cheap with If-None-Match)


def _body(query: dict[str, Any], result: service.Availability) -> tuple[bytes, str]:
    """The JSON body and its strong ETag, which covers everything but the cursor.

    Every cursor handed out stays valid, so a client that keeps an earlier body
    (after a 304) keeps a usable cursor; leaving it out lets the ETag stay put
    while writes elsewhere move the database's snapshots on.
    """
    replaces = "null" if result.replaces is None else f"[{result.replaces}]"
    content = (
        f'{{"query":{json.dumps(query, ensure_ascii=False, separators=(",", ":"))},'
        f'"hospitals":[{result.hospitals}],"items":[{result.items}],"replaces":{replaces},'
        f'"waiting_lists":[{result.waiting_lists}]'
    ).encode()
    etag = '"' + hashlib.blake2b(content, digest_size=16).hexdigest() + '"'
    return content + f',"cursor":{json.dumps(result.cursor.encode())}}}'.encode(), etag


def _cache(request: Request) -> service.FragmentCache:
    """This app's cache of rendered hospital-days (each replica keeps its own)."""
    cache: service.FragmentCache | None = getattr(request.app.state, "availability_fragments", None)
    if cache is None:
        cache = request.app.state.availability_fragments = service.FragmentCache()
    return cache


def _matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison, as If-None-Match requires."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


@router.get(
    "/availability",
    response_model=None,
    **operation(
        "readAvailability",
        "Read slot counts of a city or county",
        responses={
            200: {"model": AvailabilityOut, "description": "Counts, with an ETag."},
            304: {"description": "If-None-Match matched: the counts have not changed."},
        },
        problems=[
            "region_out_of_scope",
            "region_too_wide",
            "invalid_date_range",
            "date_range_too_wide",
            "invalid_cursor",
        ],
    ),
)
async def read_availability(
    request: Request,
    unit: Annotated[Unit, reads("platform")],
    region: Annotated[str, Query(pattern=r"^[0-9]{6}$", description="A city or county code (GB/T 2260).")],
    date_from: Annotated[Day, Query(alias="from")],
    date_to: Annotated[Day, Query(alias="to", description="Inclusive; at most 7 days after from.")],
    hospital_id: QueryId = None,
    department_code: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    resource_kind: ResourceKind | None = None,
    modality: Modality | None = None,
    since: Annotated[
        str | None, Query(min_length=1, max_length=8192, description="cursor of an earlier answer")
    ] = None,
) -> Response:
    """Pool-open, pending, booked, returned and public slot counts of a city or county, per
    hospital, department, date, period and resource kind (R18), and within the kind per doctor
    title (visits), modality (examinations) or ward (beds); and waiting-list lengths per hospital,
    department and kind, as counts; no personal data."""
    service.check_window(region, date_from, date_to)
    if not covers(unit.caller.region_code, region):
        raise Forbidden(
            "region_out_of_scope",
            f"This platform serves {unit.caller.region_code}, which does not cover {region}.",
        )
    window = service.Window(
        now=unit.now,
        region=region,
        date_from=date_from,
        date_to=date_to,
        hospital_id=hospital_id,
        department_code=department_code,
        resource_kind=resource_kind,
        modality=modality,
    )
    result = await service.read(
        session=unit.session,
        window=window,
        since=service.Cursor.decode(since) if since is not None else None,
        cache=_cache(request),
    )
    query = {
        "region": region,
        "from": date_from.isoformat(),
        "to": date_to.isoformat(),
        "hospital_id": hospital_id,
        "department_code": department_code,
        "resource_kind": resource_kind,
        "modality": modality,
        "since": since,
    }
    content, etag = _body(query, result)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(content=content, media_type="application/json", headers=headers)
