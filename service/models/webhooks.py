"""Webhook endpoints of hospitals and primary institutions, one delivery row per event and endpoint, one row per attempt."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    ARRAY,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.kit.db import Base

ENDPOINT_STATUSES = ("active", "disabled")
DELIVERY_STATUSES = ("pending", "delivered", "dead")
EXCERPT_CHARS = 500


class WebhookEndpoint(Base):
    """A URL of a hospital's HIS or a primary institution's backend, the event types it wants,
    and its signing secrets."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'disabled')", name="status"),
        CheckConstraint("cardinality(event_types) >= 1", name="event_types"),
        CheckConstraint(
            "(previous_secret_enc IS NULL) = (previous_secret_expires_at IS NULL)", name="previous_secret"
        ),
        Index("ix_webhook_endpoints_organisation_id", "organisation_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # The owner: a hospital, or a primary institution (revision 0022); events reach it when they
    # name it as their recipient (events.recipient_id).
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[str]] = mapped_column(ARRAY(Text))
    # "whsec_..." encrypted with the column name "webhook_endpoints.secret" as associated data;
    # the previous secret of a rotation uses the same, as it is the same kind of value.
    secret_enc: Mapped[bytes] = mapped_column(LargeBinary)
    previous_secret_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(10))
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # A dispatcher's claim: committed before its HTTP call, checked when it writes the result.
    lease_token: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The receiver did not answer: when to re-send the queue's head, between the backoff's retries.
    probe_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the owner last asked for a test event: one per endpoint per interval (revision 0021).
    test_sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookDelivery(Base):
    """One event for one endpoint: pending until delivered or dead-lettered."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id"),
        CheckConstraint("status IN ('pending', 'delivered', 'dead')", name="status"),
        CheckConstraint("attempts >= 0", name="attempts"),
        CheckConstraint("(status = 'delivered') = (delivered_at IS NOT NULL)", name="delivered_at"),
        # The head of each endpoint's queue, and the dead letters of a hospital's endpoints.
        Index("ix_webhook_deliveries_endpoint_id_status_id", "endpoint_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id"))
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(10))
    # Attempts in the current round: a replay starts a new round of retries.
    attempts: Mapped[int] = mapped_column(SmallInteger)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    dead_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookAttempt(Base):
    """One HTTP request of a delivery and what came back."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (
        CheckConstraint("char_length(response_excerpt) <= 500", name="excerpt_length"),
        CheckConstraint("http_status IS NOT NULL OR error IS NOT NULL", name="outcome"),
        Index("ix_webhook_attempts_delivery_id_id", "delivery_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    http_status: Mapped[int | None] = mapped_column(SmallInteger)
    error: Mapped[str | None] = mapped_column(String(200))
    response_excerpt: Mapped[str] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)
