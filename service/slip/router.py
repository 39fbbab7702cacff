"""The referral slip (PDF) and the patient notice, for whoever may read the referral (R11)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Response

from service.slip import service
from service.slip.render import render_slip
from service.slip.schemas import PatientNotice
from service.web.contract import operation
from service.web.unit import Unit, UnitRoute, writes

router = APIRouter(prefix="/v1", tags=["referrals"], route_class=UnitRoute)
# Both endpoints record the read of the referral in the audit trail (R15), so they write.
Reader = Annotated[Unit, writes("primary", "hospital")]


@router.get(
    "/referrals/{reference}/slip.pdf",
    response_class=Response,
    **operation(
        "getReferralSlip",
        "Download the printable referral slip",
        responses={
            200: {
                "content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}},
                "description": "The slip, one A4 page.",
            }
        },
        problems=["referral_not_found"],
    ),
)
async def get_slip(reference: str, unit: Reader) -> Response:
    """The printable referral slip; a cancelled referral's slip says so. The read is audited (R15)."""
    content = await service.slip_content(
        session=unit.session, actor=unit.actor, caller=unit.caller, crypto=unit.crypto, reference=reference
    )
    # Rendered off the event loop; the audited read commits with the slip it delivers.
    pdf = await asyncio.to_thread(render_slip, content, issued_at=unit.now)
    return Response(
        pdf,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'inline; filename="{content.notice.reference}.pdf"',
            "Cache-Control": "no-store",
        },
    )


@router.get(
    "/referrals/{reference}/notice",
    response_model=PatientNotice,
    **operation(
        "getPatientNotice", "Read the patient notice and its SMS text", problems=["referral_not_found"]
    ),
)
async def get_notice(reference: str, unit: Reader) -> PatientNotice:
    """The patient notice as data and as SMS text, for the family doctor app to send (R11)."""
    return await service.patient_notice(
        session=unit.session,
        actor=unit.actor,
        caller=unit.caller,
        crypto=unit.crypto,
        reference=reference,
        purpose="notice",
    )
