"""The transactional outbox: one row per change a hospital or a primary institution must act on."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import BigInteger, DateTime, ForeignKey, Identity, Index, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from service.kit.db import Base

EventType = Literal[
    "referral.booked",
    "referral.cancelled",
    "slots.returned",
    "referral.attendance_recorded",
    "access.revoked",
    "access.reinstated",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)

# What a primary institution's endpoints may subscribe to: changes to the referrals it booked and
# to its residents' no-show bars (docs/webhooks.md, "Events for primary institutions"). A type
# both lists name (``referral.cancelled``) is one change told to each recipient in a payload of
# its own, described by a schema of its own: contracts/events/institution/. Another feature's
# event for institutions is a new type here, in ``INSTITUTION_EVENT_VERSIONS`` and in that
# directory, emitted with ``outbox.events.emit_to_institution``.
InstitutionEventType = Literal[
    "referral.cancelled",
    "referral.received",
    "referral.attendance_recorded",
    "no_show_bar.started",
    "no_show_bar.lifted",
    "waitlist.offered",
]
INSTITUTION_EVENT_TYPES: tuple[str, ...] = get_args(InstitutionEventType)
# Every type an endpoint may name, whoever owns it (the API's enum); the owner's role narrows it.
AnyEventType = Literal[
    "referral.booked",
    "referral.cancelled",
    "slots.returned",
    "referral.attendance_recorded",
    "access.revoked",
    "access.reinstated",
    "referral.received",
    "no_show_bar.started",
    "no_show_bar.lifted",
    "waitlist.offered",
]

# The signed ping a hospital asks for (POST /v1/webhooks/endpoints/{id}/test): sent to that one
# endpoint at once, never written to the outbox, never subscribed to.
TEST_EVENT_TYPE = "webhook.test"

# The schema version each type is written in: the envelope's "version", and the file
# contracts/events/<type>.v<version>.schema.json that describes the whole body. A version is
# never changed once published; a change of shape is the next number (contracts/events/README.md).
EVENT_VERSIONS: dict[str, int] = {
    "referral.booked": 3,
    "referral.cancelled": 3,
    "slots.returned": 3,
    "referral.attendance_recorded": 2,
    "access.revoked": 2,
    "access.reinstated": 2,
    TEST_EVENT_TYPE: 1,
}
# The same for a primary institution's events: contracts/events/institution/<type>.v<N>.schema.json.
# Versions are counted per recipient: the institution's referral.cancelled v1 is not the
# hospital's v1.
INSTITUTION_EVENT_VERSIONS: dict[str, int] = {
    "referral.cancelled": 1,
    "referral.received": 1,
    "referral.attendance_recorded": 1,
    "no_show_bar.started": 1,
    "no_show_bar.lifted": 1,
    "waitlist.offered": 1,
    TEST_EVENT_TYPE: 1,
}

# A new event's public id: "evt_" and 32 hex digits of a random UUID (122 random bits), so it
# tells nothing of how many events there are or in what order they came (revision 0021).
PUBLIC_ID_SQL = "'evt_' || replace(gen_random_uuid()::text, '-', '')"


class Event(Base):
    """A change told to one organisation, written in the same transaction as the change itself."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_hospital_id_id", "hospital_id", "id"),
        Index("ix_events_public_id", "public_id", unique=True),
    )

    # Internal: orders the outbox and joins the deliveries; never shown.
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # The webhook-id: opaque and unique, the same on every retry and replay. NULL only for events
    # written before revision 0021, which went out as "evt_<id>" and keep that id (``webhook_id``).
    public_id: Mapped[str | None] = mapped_column(String(40), server_default=text(PUBLIC_ID_SQL))
    # The hospital the event is about (docs/performance.md would distribute events by it).
    hospital_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    # Whose endpoints receive it: the hospital itself, or the primary institution that booked the
    # referral (revision 0022). Each recipient gets a row of its own, with its own payload.
    recipient_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    type: Mapped[str] = mapped_column(String(40))
    # The Standard Webhooks body: {"type", "version", "timestamp", "data"} (without "version"
    # before revision 0021).
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    @property
    def webhook_id(self) -> str:
        return webhook_id(self.id, self.public_id)


def webhook_id(event_id: int, public_id: str | None) -> str:
    """The ``webhook-id`` of an event: its public id, or ``evt_<id>`` for one written before 0021."""
    return public_id if public_id is not None else f"evt_{event_id}"


def new_public_id() -> str:
    """A public id of the same form as ``PUBLIC_ID_SQL``, for a test event, which has no row."""
    return f"evt_{uuid.uuid4().hex}"
