"""GET /v1/availability: a platform polls a city's counts, revalidates with ETags, follows a cursor."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from service.availability import service
from service.availability.schemas import AvailabilityOut
from service.context import Caller
from service.deps import State, require
from service.errors import Forbidden
from service.ids import QueryId
from service.regions import covers

router = APIRouter(prefix="/v1", tags=["availability"])
CACHE_CONTROL = "private, no-cache"  # per-client scope; always revalidate (cheap with If-None-Match)


def _body(query: dict[str, Any], result: service.Availability) -> tuple[bytes, str]:
    """The JSON body and its strong ETag, which covers everything but the cursor.

    Every cursor handed out stays valid, so a client that keeps an earlier body
    (after a 304) keeps a usable cursor; leaving it out lets the ETag stay put
    while other regions' writes move the database's transaction horizon.
    """
    departments: dict[int, dict[str, str]] = {}
    for g in result.groups:
        departments.setdefault(g.hospital_id, {})[g.department_code] = g.department_name
    for day in result.replaced or []:
        departments.setdefault(day.hospital_id, {})[day.department_code] = day.department_name
    data = {
        "query": query,
        "hospitals": [
            {
                "id": h.id,
                "code": h.code,
                "name": h.name,
                "region_code": h.region_code,
                "departments": [
                    {"code": code, "name": name} for code, name in sorted(departments[h.id].items())
                ],
            }
            for h in result.hospitals
            if h.id in departments
        ],
        "items": [
            {
                "hospital_id": g.hospital_id,
                "department_code": g.department_code,
                "service_date": g.service_date.isoformat(),
                "period": g.period,
                "doctor_title": g.doctor_title,
                "public": g.public,
                "pool_pending": g.pool_pending,
                "pool_open": g.pool_open,
                "booked": g.booked,
                "returned": g.returned,
            }
            for g in result.groups
        ],
        "replaces": None
        if result.replaced is None
        else [
            {
                "hospital_id": d.hospital_id,
                "department_code": d.department_code,
                "service_date": d.service_date.isoformat(),
            }
            for d in result.replaced
        ],
    }
    content = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    etag = '"' + hashlib.blake2b(content, digest_size=16).hexdigest() + '"'
    cursor = json.dumps(result.cursor.encode()).encode()
    return content[:-1] + b',"cursor":' + cursor + b"}", etag


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
    responses={
        200: {"model": AvailabilityOut, "description": "Counts, with an ETag."},
        304: {"description": "If-None-Match matched: the counts have not changed."},
    },
)
async def read_availability(
    request: Request,
    state: State,
    caller: Annotated[Caller, Depends(require("platform"))],
    region: Annotated[str, Query(pattern=r"^[0-9]{6}$", description="A city or county code (GB/T 2260).")],
    date_from: Annotated[date, Query(alias="from")],
    date_to: Annotated[date, Query(alias="to", description="Inclusive; at most 7 days after from.")],
    hospital_id: QueryId = None,
    department_code: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    since: Annotated[
        str | None, Query(min_length=1, max_length=8192, description="cursor of an earlier answer")
    ] = None,
) -> Response:
    """Pool-open, pending, booked, returned and public slot counts of a city or county, per
    hospital, department, date, period and doctor title; no personal data."""
    service.check_window(region, date_from, date_to)
    if not covers(caller.region_code, region):
        raise Forbidden(
            "region_out_of_scope",
            f"This platform serves {caller.region_code}, which does not cover {region}.",
        )
    cursor = service.Cursor.decode(since) if since is not None else None
    now = state.clock.now()
    async with state.db.sessionmaker() as session:
        result = await service.read_availability(
            session=session,
            now=now,
            region=region,
            date_from=date_from,
            date_to=date_to,
            hospital_id=hospital_id,
            department_code=department_code,
            since=cursor,
        )
    query = {
        "region": region,
        "from": date_from.isoformat(),
        "to": date_to.isoformat(),
        "hospital_id": hospital_id,
        "department_code": department_code,
        "since": since,
    }
    content, etag = _body(query, result)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(content=content, media_type="application/json", headers=headers)
