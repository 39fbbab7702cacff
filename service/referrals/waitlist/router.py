"""The family doctor's waiting list: entries, and the offers of freed slots (docs/waitlist.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from service.audit.service import record
from service.kit.errors import Problem
from service.referrals.schemas import ReferralOut
from service.referrals.waitlist import entries, offers
from service.referrals.waitlist.schemas import EntryIn, EntryList, EntryOut, OfferList, OfferOut, WithdrawIn
from service.web.contract import operation
from service.web.unit import Unit, UnitRoute, writes

router = APIRouter(prefix="/v1/waitlist", tags=["waitlist"], route_class=UnitRoute)


async def _refused(unit: Unit, problem: Problem, action: str, detail: dict[str, object]) -> Problem:
    """A refusal rolls the change back; it is recorded in a fresh transaction and then answered."""
    await unit.session.rollback()
    await record(
        session=unit.session,
        actor=unit.actor,
        action=action,
        code=problem.code,
        reason=problem.detail,
        detail=detail,
    )
    return problem


@router.post(
    "/entries",
    response_model=EntryOut,
    status_code=201,
    **operation(
        "createWaitlistEntry",
        "Put a signed resident on a hospital department's waiting list",
        problems=[
            "invalid_id_number",
            "referring_doctor_unknown",
            "hospital_not_found",
            "department_not_found",
            "out_of_scope",
            "not_signed",
            "name_mismatch",
            "consultation_out_of_window",
            "disease_not_covered",
            "no_policy",
            "waitlist_range_past",
            "urgent_priority_not_allowed",
            "waitlist_entry_exists",
            "resident_barred",
            "doctor_suspended",
            "doctor_hourly_limit",
            "doctor_daily_limit",
            "resident_active_limit",
        ],
    ),
)
async def create_entry(body: EntryIn, unit: Annotated[Unit, writes("primary")]) -> JSONResponse | Problem:
    """Checked as a booking is (R7–R10, R13) and counted against the booking limits (R14)."""
    try:
        out = await entries.create_entry(
            session=unit.session, actor=unit.actor, caller=unit.caller, crypto=unit.crypto, entry=body
        )
    except Problem as exc:
        return await _refused(
            unit,
            exc,
            "waitlist.refused",
            {"hospital_id": body.hospital_id, "department_id": body.department_id},
        )
    return JSONResponse(
        out.model_dump(mode="json"),
        status_code=201,
        headers={"Location": f"/v1/waitlist/entries/{out.reference}"},
    )


@router.get(
    "/entries",
    response_model=EntryList,
    **operation("listWaitlistEntries", "List the caller's waiting-list entries"),
)
async def list_entries(
    unit: Annotated[Unit, writes("primary")],
    status: Literal["waiting", "booked", "withdrawn", "expired"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> EntryList:
    """The caller's own entries, newest first, each with the offer it holds, if any."""
    items = await entries.list_entries(
        session=unit.session,
        actor=unit.actor,
        caller=unit.caller,
        crypto=unit.crypto,
        status=status,
        limit=limit,
    )
    return EntryList(items=items)


@router.post(
    "/entries/{reference}/withdraw",
    response_model=EntryOut,
    **operation(
        "withdrawWaitlistEntry",
        "Take a resident off the waiting list",
        problems=["waitlist_entry_not_found", "waitlist_entry_closed"],
    ),
)
async def withdraw_entry(
    reference: str, body: WithdrawIn, unit: Annotated[Unit, writes("primary")]
) -> EntryOut:
    """An offer the entry holds passes to the next in line."""
    return await entries.withdraw_entry(
        session=unit.session,
        actor=unit.actor,
        caller=unit.caller,
        crypto=unit.crypto,
        reference=reference,
        reason=body.reason,
    )


@router.get(
    "/offers",
    response_model=OfferList,
    **operation("listWaitlistOffers", "List the caller's pending waiting-list offers"),
)
async def list_offers(unit: Annotated[Unit, writes("primary")]) -> OfferList:
    """Slots held for the caller's entries, soonest to expire first: accept or decline before ``expires_at``."""
    items = await offers.list_pending_offers(
        session=unit.session, actor=unit.actor, caller=unit.caller, crypto=unit.crypto
    )
    return OfferList(items=items)


@router.post(
    "/offers/{reference}/accept",
    response_model=ReferralOut,
    status_code=201,
    **operation(
        "acceptWaitlistOffer",
        "Accept an offer: the held slot is booked as a referral",
        problems=[
            "offer_not_found",
            "offer_closed",
            "not_signed",
            "name_mismatch",
            "consultation_out_of_window",
            "disease_not_covered",
            "out_of_scope",
            "no_policy",
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
        ],
    ),
)
async def accept_offer(reference: str, unit: Annotated[Unit, writes("primary")]) -> JSONResponse | Problem:
    """Every booking rule is checked again, by the booking itself; a refusal leaves the offer to expire."""
    try:
        out = await offers.accept_offer(
            session=unit.session,
            actor=unit.actor,
            caller=unit.caller,
            crypto=unit.crypto,
            reference=reference,
        )
    except Problem as exc:
        return await _refused(unit, exc, "waitlist.accept_refused", {"offer": reference})
    return JSONResponse(
        out.model_dump(mode="json"), status_code=201, headers={"Location": f"/v1/referrals/{out.reference}"}
    )


@router.post(
    "/offers/{reference}/decline",
    response_model=OfferOut,
    **operation(
        "declineWaitlistOffer",
        "Decline an offer: the slot passes to the next in line",
        problems=["offer_not_found", "offer_closed"],
    ),
)
async def decline_offer(reference: str, unit: Annotated[Unit, writes("primary")]) -> OfferOut:
    """The entry keeps its place for other slots."""
    return await offers.decline_offer(
        session=unit.session, actor=unit.actor, caller=unit.caller, crypto=unit.crypto, reference=reference
    )
