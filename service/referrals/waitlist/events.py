"""The ``waitlist.offered`` event: what the family doctor's app is told when a slot is held for it.

The payload is built here and described by
``contracts/events/institution/waitlist.offered.v1.schema.json``; ``emit_offer_event`` sends it to
the entry's institution, in the offer's transaction, like every event for an institution
(``outbox.events.emit_to_institution``, docs/webhooks.md). The offer is also listed by
``GET /v1/waitlist/offers`` (docs/waitlist.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.clock import instant
from service.models.registry import Department, Organisation
from service.models.slots import ClinicSession, Slot
from service.models.waitlist import WaitlistEntry, WaitlistOffer
from service.outbox.events import emit_to_institution
from service.referrals.events import institution_session_data, institution_slot_data


def offer_event_data(
    *,
    offer: WaitlistOffer,
    entry: WaitlistEntry,
    slot: Slot,
    clinic_session: ClinicSession,
    hospital: Organisation,
    department: Department,
    resident_name_masked: str,
) -> dict[str, Any]:
    """What the family doctor's app needs to accept or decline: never the ID number (R15)."""
    return {
        "offer": {
            "reference": offer.reference,
            "offered_at": instant(offer.offered_at),
            "expires_at": instant(offer.expires_at),
        },
        "entry": {"reference": entry.reference, "urgent": entry.urgent},
        "hospital": {"code": hospital.code, "name": hospital.name},
        "department": {"code": department.code, "name": department.name},
        "session": institution_session_data(clinic_session),
        "slot": institution_slot_data(slot),
        "patient": {"name_masked": resident_name_masked},
    }


async def emit_offer_event(
    *, session: AsyncSession, booker_org_id: int, hospital_id: int, data: dict[str, Any], at: datetime
) -> None:
    """Tell the entry's institution of its offer: its endpoints subscribed to ``waitlist.offered``
    receive it, written with the offer so that both commit or neither does."""
    await emit_to_institution(
        session=session,
        institution_id=booker_org_id,
        hospital_id=hospital_id,
        event_type="waitlist.offered",
        data=data,
        at=at,
    )
