"""Family-doctor apps search and book; institutions and the hotline cancel; hospitals read."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError

from service.abuse.hotline import HotlineLimits
from service.kit.bounds import Day, day_in_window
from service.kit.cursors import CursorQuery, cursor_id, decode_cursor, encode_cursor
from service.kit.db import busy
from service.kit.dberrors import LOCK_NOT_AVAILABLE, sqlstate
from service.kit.errors import Problem
from service.kit.ids import MAX_ID, QueryId
from service.kit.metrics import BOOKINGS
from service.kit.resources import Modality, ResourceKind
from service.referrals import booking, cancellation, idempotency, reading, search
from service.referrals.schemas import (
    BookableSlotList,
    BookingIn,
    CancelIn,
    HotlineCancelIn,
    ReferralList,
    ReferralOut,
)
from service.web.contract import operation
from service.web.unit import Unit, UnitRoute, reads, writes

router = APIRouter(prefix="/v1", tags=["referrals"], route_class=UnitRoute)


@router.get(
    "/pool/slots",
    response_model=BookableSlotList,
    **operation("searchSlots", "Search the slots the caller may book now"),
)
async def search_slots(
    unit: Annotated[Unit, reads("primary")],
    hospital_id: QueryId = None,
    department_id: QueryId = None,
    service_date: Day | None = None,
    title: Literal["chief", "associate_chief", "attending", "resident"] | None = None,
    resource_kind: ResourceKind | None = None,
    modality: Modality | None = None,
    cursor: Annotated[
        int | None, Query(gt=0, le=MAX_ID, description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> BookableSlotList:
    """Reserved slots the caller may book right now (its scope only, window open, not started).

    Visits, examinations and beds alike (R18); filter with ``resource_kind`` and ``modality``.
    """
    items, next_cursor = await search.search_bookable_slots(
        session=unit.session,
        caller=unit.caller,
        now=unit.now,
        hospital_id=hospital_id,
        department_id=department_id,
        service_date=service_date,
        title=title,
        resource_kind=resource_kind,
        modality=modality,
        after_id=cursor,
        limit=limit,
    )
    return BookableSlotList(items=items, next_cursor=next_cursor)


async def _book(unit: Unit, body: BookingIn, idempotency_key: str | None) -> tuple[int, dict[str, Any], bool]:
    """The booking, or the answer stored for the first request with this Idempotency-Key."""
    if idempotency_key:
        stored = await idempotency.claim_idempotency_key(
            session=unit.session,
            actor=unit.actor,
            crypto=unit.crypto,
            client_id=unit.caller.client_id,
            key=idempotency_key,
            body_hash=idempotency.request_hash(body.model_dump(mode="json")),
        )
        if stored is not None:
            return stored[0], stored[1], True
    out = await booking.book_referral(
        session=unit.session, actor=unit.actor, caller=unit.caller, crypto=unit.crypto, booking=body
    )
    data = out.model_dump(mode="json")
    if idempotency_key:
        await idempotency.store_idempotent_answer(
            session=unit.session, client_id=unit.caller.client_id, key=idempotency_key, status=201, body=data
        )
    return 201, data, False


@router.post(
    "/referrals",
    response_model=ReferralOut,
    status_code=201,
    **operation(
        "bookReferral",
        "Book a reserved slot for a signed resident",
        problems=[
            "invalid_id_number",
            "referring_doctor_unknown",
            "slot_not_found",
            "out_of_scope",
            "not_signed",
            "name_mismatch",
            "consultation_out_of_window",
            "disease_not_covered",
            "no_policy",
            "window_not_open",
            "window_closed",
            "slot_not_in_pool",
            "slot_taken",
            "duplicate_referral",
            "resident_barred",
            "doctor_suspended",
            "doctor_hourly_limit",
            "doctor_daily_limit",
            "institution_share_limit",
            "resident_active_limit",
            "idempotency_key_reused",
        ],
    ),
)
async def book_referral(
    body: BookingIn,
    unit: Annotated[Unit, writes("primary")],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> JSONResponse | Problem:
    """Book a reserved slot for a signed resident after a consultation (R5–R11)."""
    # A refusal rolls the booking's transaction back; the refusal is then recorded in a new
    # one and returned, so the route commits the record and then refuses. A booking that
    # succeeds pays for no savepoint.
    try:
        status, data, replayed = await _book(unit, body, idempotency_key)
    except DBAPIError as exc:
        if sqlstate(exc) != LOCK_NOT_AVAILABLE:
            raise
        refusal: Problem = busy()
    except Problem as exc:
        refusal = exc
    else:
        # A replay answers the booking made before: it is no new booking, so it is not counted as one.
        BOOKINGS.labels("idempotent_replay" if replayed else "booked").inc()
        headers = {"Location": f"/v1/referrals/{data['reference']}"}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(data, status_code=status, headers=headers)
    await unit.session.rollback()
    BOOKINGS.labels(refusal.code).inc()
    if refusal.code != "idempotency_key_reused":
        await booking.record_refusal(session=unit.session, actor=unit.actor, problem=refusal, booking=body)
    return refusal


def cursor_day(value: str) -> date:
    """A service date inside a cursor: within the API's window, as every date it accepts."""
    day = date.fromisoformat(value)
    if not day_in_window(day):
        raise ValueError("out-of-window date")
    return day


@router.get(
    "/referrals",
    response_model=ReferralList,
    **operation("listReferrals", "List referrals made or received", problems=["invalid_cursor"]),
)
async def list_referrals(
    unit: Annotated[Unit, writes("primary", "hospital")],
    service_date: Day | None = None,
    department_code: str | None = None,
    status: Literal["booked", "cancelled"] | None = None,
    cursor: CursorQuery = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> ReferralList:
    """Referrals the caller made (primary) or receives (hospital, with the R17 priority marker).

    Ordered by service date, then booking; pass ``next_cursor`` back as ``cursor`` for the next page.
    """
    after = (
        decode_cursor(cursor, lambda p: (cursor_day(p[0]), cursor_id(p[1]))) if cursor is not None else None
    )
    items, following = await reading.list_referrals(
        session=unit.session,
        actor=unit.actor,
        caller=unit.caller,
        crypto=unit.crypto,
        service_date=service_date,
        department_code=department_code,
        status=status,
        after=after,
        limit=limit,
    )
    next_cursor = encode_cursor(following[0].isoformat(), following[1]) if following else None
    return ReferralList(items=items, next_cursor=next_cursor)


@router.get(
    "/referrals/{reference}",
    response_model=ReferralOut,
    **operation("getReferral", "Read a referral", problems=["referral_not_found"]),
)
async def get_referral(reference: str, unit: Annotated[Unit, writes("primary", "hospital")]) -> ReferralOut:
    """One referral, visible to the institution that made it and the hospital that receives it."""
    return await reading.read_referral(
        session=unit.session, actor=unit.actor, caller=unit.caller, crypto=unit.crypto, reference=reference
    )


@router.post(
    "/referrals/{reference}/cancel",
    response_model=ReferralOut,
    **operation(
        "cancelReferral",
        "Cancel a referral (referring institution)",
        problems=["referral_not_found", "already_cancelled", "cancellation_closed"],
    ),
)
async def cancel_referral(
    reference: str, body: CancelIn, unit: Annotated[Unit, writes("primary")]
) -> ReferralOut:
    """The referring institution cancels, before the policy's cut-off (R12)."""
    return await cancellation.cancel_by_institution(
        session=unit.session,
        actor=unit.actor,
        caller=unit.caller,
        crypto=unit.crypto,
        reference=reference,
        reason=body.reason,
    )


@router.post(
    "/hotline/cancellations",
    response_model=ReferralOut,
    **operation(
        "cancelByHotline",
        "Cancel a referral for a patient on the phone",
        problems=["verification_failed", "verification_locked", "already_cancelled", "cancellation_closed"],
    ),
)
async def hotline_cancel(
    body: HotlineCancelIn, unit: Annotated[Unit, writes("hotline")]
) -> ReferralOut | Problem:
    """The hotline cancels for a patient who gives the reference and verification code (R12).

    An unknown reference and a wrong code get the same 422 ``verification_failed``. After
    repeated failures for one reference, or from one hotline client, every attempt (even with
    the right code) gets 429 ``verification_locked`` with ``Retry-After`` (docs/abuse-limits.md).
    """
    # A refusal is returned, not raised: the failed attempt it counted commits before the caller hears it.
    return await cancellation.cancel_by_hotline(
        session=unit.session,
        actor=unit.actor,
        caller=unit.caller,
        crypto=unit.crypto,
        reference=body.reference,
        verification_code=body.verification_code,
        reason=body.reason,
        limits=HotlineLimits.from_settings(unit.settings),
    )
