"""The commission suspends, revokes and reinstates access (R14) and reads the audit trail (R15)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from service.kit.bounds import QueryInstant
from service.kit.cursors import CursorQuery, decode_id_cursor, encode_cursor
from service.kit.errors import Unprocessable
from service.kit.ids import PathId, QueryId
from service.supervision import service
from service.supervision.schemas import (
    AuditPage,
    AuditSearch,
    ReinstateIn,
    SubjectType,
    SuspensionIn,
    SuspensionList,
    SuspensionOut,
)
from service.web.contract import operation
from service.web.unit import Unit, UnitRoute, reads, writes

router = APIRouter(prefix="/v1", tags=["supervision"], route_class=UnitRoute)
Commission = Annotated[Unit, writes("commission")]
# Listing suspensions records nothing; every other endpoint here changes state or audits a read.
CommissionReading = Annotated[Unit, reads("commission")]


@router.post(
    "/supervision/suspensions",
    response_model=SuspensionOut,
    status_code=201,
    **operation(
        "suspendAccess",
        "Suspend or revoke a doctor, an institution or an API client",
        problems=["subject_not_found", "own_organisation", "until_in_past", "already_suspended"],
    ),
)
async def suspend_access(body: SuspensionIn, unit: Commission) -> SuspensionOut:
    """Suspend or revoke a family doctor, an institution or an API client of the region (R14).

    It takes effect on the subject's very next request. Booked referrals stay valid unless
    ``cancel_active_referrals`` is set; then they are cancelled like any other cancellation.
    """
    return await service.suspend_access(
        session=unit.session, actor=unit.actor, caller=unit.caller, crypto=unit.crypto, body=body
    )


@router.get(
    "/supervision/suspensions",
    response_model=SuspensionList,
    **operation("listSuspensions", "List suspensions and revocations", problems=["invalid_cursor"]),
)
async def list_suspensions(
    unit: CommissionReading,
    subject_type: SubjectType | None = None,
    organisation_id: QueryId = None,
    active: Annotated[bool | None, Query(description="In force now (true) or ended (false).")] = None,
    cursor: CursorQuery = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> SuspensionList:
    """Suspensions and revocations of subjects in the commission's region, newest first."""
    before = decode_id_cursor(cursor)
    items, following = await service.list_suspensions(
        session=unit.session,
        caller=unit.caller,
        now=unit.now,
        subject_type=subject_type,
        organisation_id=organisation_id,
        active=active,
        before_id=before,
        limit=limit,
    )
    return SuspensionList(
        items=items, next_cursor=encode_cursor(following) if following is not None else None
    )


@router.post(
    "/supervision/suspensions/{suspension_id}/reinstate",
    response_model=SuspensionOut,
    **operation(
        "reinstateAccess",
        "End a suspension or revocation",
        problems=["suspension_not_found", "already_reinstated"],
    ),
)
async def reinstate_access(suspension_id: PathId, body: ReinstateIn, unit: Commission) -> SuspensionOut:
    """End a suspension or revocation, with a recorded reason; access returns on the next request."""
    return await service.reinstate_access(
        session=unit.session,
        actor=unit.actor,
        caller=unit.caller,
        suspension_id=suspension_id,
        reason=body.reason,
    )


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise Unprocessable("naive_datetime", f"'{name}' needs a UTC offset, e.g. 2026-03-02T09:00:00+08:00.")
    return value


async def _search_audit(unit: Unit, search: AuditSearch) -> AuditPage:
    before = decode_id_cursor(search.cursor)
    items, following = await service.query_audit(
        session=unit.session,
        actor=unit.actor,
        caller=unit.caller,
        crypto=unit.crypto,
        resident_id_number=search.resident_id_number,
        actor_client_id=search.actor_client_id,
        actor_org_id=search.actor_org_id,
        action=search.action,
        from_=_aware("from", search.from_),
        to=_aware("to", search.to),
        before_id=before,
        limit=search.limit,
    )
    return AuditPage(items=items, next_cursor=encode_cursor(following) if following is not None else None)


@router.post(
    "/audit/search",
    response_model=AuditPage,
    **operation(
        "searchAudit",
        "Search the audit trail",
        problems=["invalid_cursor", "invalid_id_number", "naive_datetime"],
    ),
)
async def search_audit(body: AuditSearch, unit: Commission) -> AuditPage:
    """The audit trail of the commission's region, newest first (R15); this query is recorded too.

    Filter by resident (ID number), by actor (client or organisation), by action and by time;
    page with ``cursor``. The ID number travels in the body, out of URLs and proxy logs.
    """
    return await _search_audit(unit, body)


@router.get(
    "/audit",
    response_model=AuditPage,
    deprecated=True,
    **operation(
        "queryAudit",
        "Search the audit trail (deprecated query form)",
        problems=["invalid_cursor", "invalid_id_number", "naive_datetime"],
    ),
)
async def query_audit(
    unit: Commission,
    resident_id_number: Annotated[
        str | None, Query(min_length=15, max_length=20, description="Found through the blind index.")
    ] = None,
    actor_client_id: QueryId = None,
    actor_org_id: QueryId = None,
    action: Annotated[str | None, Query(min_length=1, max_length=40)] = None,
    from_: Annotated[QueryInstant | None, Query(alias="from", description="Inclusive.")] = None,
    to: Annotated[QueryInstant | None, Query(description="Exclusive.")] = None,
    cursor: CursorQuery = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditPage:
    """Deprecated: use ``POST /v1/audit/search``, which takes the same filters in a body.

    A resident's ID number in a query string ends up in proxy and access logs. This form keeps
    working and answers exactly as the search does.
    """
    search = AuditSearch(
        resident_id_number=resident_id_number,
        actor_client_id=actor_client_id,
        actor_org_id=actor_org_id,
        action=action,
        from_=from_,
        to=to,
        cursor=cursor,
        limit=limit,
    )
    return await _search_audit(unit, search)
