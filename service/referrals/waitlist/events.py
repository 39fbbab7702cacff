"""The ``waitlist.offered`` event: what the family doctor's app is told when a slot is held for it.

The payload is built here and checked against ``contracts/events/primary/waitlist.offered.v1.schema.json``
(``tests/test_waitlist.py``). Delivery to primary institutions is not built yet: ``emit_offer_event``
is the one call site, and it writes nothing until then. The offer is always visible meanwhile
through ``GET /v1/waitlist/offers`` (docs/waitlist.md).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.clock import instant
from service.models.registry import Department, Organisation
from service.models.slots import ClinicSession, Slot
from service.models.waitlist import WaitlistEntry, WaitlistOffer
from service.slots.returns import session_event_data

OFFER_EVENT_TYPE = "waitlist.offered"
OFFER_EVENT_VERSION = 1


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
        "session": session_event_data(clinic_session),
        "slot": {
            "number": slot.number,
            "external_id": slot.external_id,
            "starts_at": instant(slot.starts_at),
            "ends_at": instant(slot.ends_at),
        },
        "patient": {"name_masked": resident_name_masked},
    }


async def emit_offer_event(
    *, session: AsyncSession, booker_org_id: int, data: dict[str, Any], at: Any
) -> None:
    """Tell the entry's institution of its offer. Wired when primary-institution webhooks land.

    Deliberately writes nothing for now: the outbox sends to hospitals only, and delivery to
    primary institutions is built separately. When it lands, this becomes one ``emit`` of
    ``OFFER_EVENT_TYPE`` to ``booker_org_id`` in the offer's transaction; every caller already
    passes the data built by ``offer_event_data``.
    """
    del session, booker_org_id, data, at
