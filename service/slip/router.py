"""The referral slip (PDF) and the patient notice, for whoever may read the referral (R11)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from service.deps import State, actor_for, require
from service.kit.context import Caller
from service.slip import service
from service.slip.render import render_slip
from service.slip.schemas import PatientNotice

router = APIRouter(prefix="/v1", tags=["referrals"])
Reader = Annotated[Caller, Depends(require("primary", "hospital"))]
PROBLEM = {"content": {"application/problem+json": {}}, "description": "Refused: see `code`."}


@router.get(
    "/referrals/{reference}/slip.pdf",
    response_class=Response,
    responses={
        200: {"content": {"application/pdf": {}}, "description": "The slip, one A4 page."},
        404: PROBLEM,
    },
)
async def get_slip(reference: str, request: Request, state: State, caller: Reader) -> Response:
    """The printable referral slip; a cancelled referral's slip says so. The read is audited (R15)."""
    actor = actor_for(request, state, caller)

    async def work(session: AsyncSession) -> PatientNotice:
        return await service.patient_notice(
            session=session,
            actor=actor,
            caller=caller,
            crypto=state.crypto,
            reference=reference,
            purpose="slip",
        )

    notice = await state.db.run(work)
    pdf = await asyncio.to_thread(render_slip, notice, issued_at=actor.now)
    return Response(
        pdf,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'inline; filename="{notice.reference}.pdf"',
            "Cache-Control": "no-store",
        },
    )


@router.get("/referrals/{reference}/notice", response_model=PatientNotice, responses={404: PROBLEM})
async def get_notice(reference: str, request: Request, state: State, caller: Reader) -> PatientNotice:
    """The patient notice as data and as SMS text, for the family doctor app to send (R11)."""
    actor = actor_for(request, state, caller)

    async def work(session: AsyncSession) -> PatientNotice:
        return await service.patient_notice(
            session=session,
            actor=actor,
            caller=caller,
            crypto=state.crypto,
            reference=reference,
            purpose="notice",
        )

    return await state.db.run(work)
