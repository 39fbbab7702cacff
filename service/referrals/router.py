"""Family-doctor apps search and book; institutions and the hotline cancel; hospitals read."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from service.abuse.hotline import HotlineLimits
from service.deps import State, actor_for, require
from service.kit.bounds import Day, day_in_window
from service.kit.context import Caller
from service.kit.cursors import CursorQuery, cursor_id, decode_cursor, encode_cursor
from service.kit.errors import Problem
from service.kit.ids import MAX_ID, QueryId
from service.kit.metrics import BOOKINGS
from service.kit.resources import Modality, ResourceKind
from service.referrals import service
from service.referrals.schemas import (
    BookableSlotList,
    BookingIn,
    CancelIn,
    HotlineCancelIn,
    ReferralList,
    ReferralOut,
)

router = APIRouter(prefix="/v1", tags=["referrals"])
Primary = Annotated[Caller, Depends(require("primary"))]
PROBLEM = {"content": {"application/problem+json": {}}, "description": "Refused: see `code`."}


@router.get("/pool/slots", response_model=BookableSlotList)
async def search_slots(
    request: Request,
    state: State,
    caller: Primary,
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
    now = state.clock.now()
    async with state.db.sessionmaker() as session:
        items, next_cursor = await service.search_bookable_slots(
            session=session,
            caller=caller,
            now=now,
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


@router.post(
    "/referrals",
    response_model=ReferralOut,
    status_code=201,
    responses={403: PROBLEM, 404: PROBLEM, 409: PROBLEM, 422: PROBLEM},
)
async def book_referral(
    body: BookingIn,
    request: Request,
    state: State,
    caller: Primary,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> JSONResponse:
    """Book a reserved slot for a signed resident after a consultation (R5–R11)."""
    actor = actor_for(request, state, caller)
    body_hash = service.request_hash(body.model_dump(mode="json"))

    async def work(session: AsyncSession) -> tuple[int, dict[str, Any], bool]:
        if idempotency_key:
            stored = await service.claim_idempotency_key(
                session=session,
                actor=actor,
                crypto=state.crypto,
                client_id=caller.client_id,
                key=idempotency_key,
                body_hash=body_hash,
            )
            if stored is not None:
                return stored[0], stored[1], True
        out = await service.book_referral(
            session=session,
            actor=actor,
            caller=caller,
            crypto=state.crypto,
            booking=body,
            lock_timeout_ms=state.settings.lock_timeout_ms,
        )
        data = out.model_dump(mode="json")
        if idempotency_key:
            await service.store_idempotent_answer(
                session=session, client_id=caller.client_id, key=idempotency_key, status=201, body=data
            )
        return 201, data, False

    try:
        status, data, replayed = await state.db.run(work)
    except Problem as exc:
        BOOKINGS.labels(exc.code).inc()
        refusal = exc
        if refusal.code != "idempotency_key_reused":
            await state.db.run(
                lambda s: service.record_refusal(session=s, actor=actor, problem=refusal, booking=body)
            )
        raise
    BOOKINGS.labels("booked").inc()
    headers = {"Location": f"/v1/referrals/{data['reference']}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(data, status_code=status, headers=headers)


def cursor_day(value: str) -> date:
    """A service date inside a cursor: within the API's window, as every date it accepts."""
    day = date.fromisoformat(value)
    if not day_in_window(day):
        raise ValueError("out-of-window date")
    return day


@router.get("/referrals", response_model=ReferralList)
async def list_referrals(
    request: Request,
    state: State,
    caller: Annotated[Caller, Depends(require("primary", "hospital"))],
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
    actor = actor_for(request, state, caller)
    items, following = await state.db.run(
        lambda session: service.list_referrals(
            session=session,
            actor=actor,
            caller=caller,
            crypto=state.crypto,
            service_date=service_date,
            department_code=department_code,
            status=status,
            after=after,
            limit=limit,
        )
    )
    next_cursor = encode_cursor(following[0].isoformat(), following[1]) if following else None
    return ReferralList(items=items, next_cursor=next_cursor)


@router.get("/referrals/{reference}", response_model=ReferralOut, responses={404: PROBLEM})
async def get_referral(
    reference: str,
    request: Request,
    state: State,
    caller: Annotated[Caller, Depends(require("primary", "hospital"))],
) -> ReferralOut:
    """One referral, visible to the institution that made it and the hospital that receives it."""
    actor = actor_for(request, state, caller)
    return await state.db.run(
        lambda session: service.read_referral(
            session=session, actor=actor, caller=caller, crypto=state.crypto, reference=reference
        )
    )


@router.post(
    "/referrals/{reference}/cancel", response_model=ReferralOut, responses={404: PROBLEM, 409: PROBLEM}
)
async def cancel_referral(
    reference: str, body: CancelIn, request: Request, state: State, caller: Primary
) -> ReferralOut:
    """The referring institution cancels, before the policy's cut-off (R12)."""
    actor = actor_for(request, state, caller)

    return await state.db.run(
        lambda session: service.cancel_by_institution(
            session=session,
            actor=actor,
            caller=caller,
            crypto=state.crypto,
            reference=reference,
            reason=body.reason,
        )
    )


@router.post(
    "/hotline/cancellations",
    response_model=ReferralOut,
    responses={409: PROBLEM, 422: PROBLEM, 429: PROBLEM},
)
async def hotline_cancel(
    body: HotlineCancelIn,
    request: Request,
    state: State,
    caller: Annotated[Caller, Depends(require("hotline"))],
) -> ReferralOut:
    """The hotline cancels for a patient who gives the reference and verification code (R12).

    An unknown reference and a wrong code get the same 422 ``verification_failed``. After
    repeated failures for one reference, or from one hotline client, every attempt (even with
    the right code) gets 429 ``verification_locked`` with ``Retry-After`` (docs/abuse-limits.md).
    """
    actor = actor_for(request, state, caller)
    limits = HotlineLimits.from_settings(state.settings)

    outcome = await state.db.run(
        lambda session: service.cancel_by_hotline(
            session=session,
            actor=actor,
            caller=caller,
            crypto=state.crypto,
            reference=body.reference,
            verification_code=body.verification_code,
            reason=body.reason,
            limits=limits,
        )
    )
    if isinstance(outcome, Problem):
        raise outcome  # recorded and committed; now the caller hears it
    return outcome
