"""Webhook endpoints, deliveries and attempts as the API shows them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from pydantic import BaseModel, Field

from service.kit.schemas import ApiModel
from service.models.events import AnyEventType
from service.outbox.urls import MAX_URL_LENGTH


class EndpointIn(ApiModel):
    url: str = Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="https URL of the receiver (http only to loopback in development).",
    )
    event_types: list[AnyEventType] = Field(
        min_length=1,
        max_length=len(get_args(AnyEventType)),
        description="Types this endpoint receives: a hospital's from its event types, a primary "
        "institution's from its own (docs/webhooks.md); another is 422 webhook_event_type_not_offered.",
    )


class EndpointPatch(ApiModel):
    url: str | None = Field(default=None, min_length=1, max_length=MAX_URL_LENGTH)
    event_types: list[AnyEventType] | None = Field(
        default=None, min_length=1, max_length=len(get_args(AnyEventType))
    )
    status: Literal["active"] | None = Field(
        default=None, description="'active' re-enables an endpoint the dispatcher disabled."
    )


class RotateSecretIn(ApiModel):
    overlap_hours: int | None = Field(
        default=None,
        ge=0,
        le=24 * 7,
        description="How long the old secret stays valid beside the new one (default: the service setting).",
    )


class EndpointOut(BaseModel):
    id: int
    url: str
    event_types: list[str]
    status: Literal["active", "disabled"]
    disabled_reason: str | None
    previous_secret_expires_at: datetime | None = Field(
        description="While set, requests carry a signature with the old secret too."
    )
    created_at: datetime
    updated_at: datetime


class EndpointWithSecret(EndpointOut):
    secret: str = Field(description="The whsec_ signing secret. Shown once: store it now.")


class EndpointList(BaseModel):
    items: list[EndpointOut]


class AttemptOut(BaseModel):
    attempted_at: datetime
    http_status: int | None
    error: str | None
    response_excerpt: str
    duration_ms: int


class DeliveryOut(BaseModel):
    id: int
    endpoint_id: int
    webhook_id: str = Field(description="The webhook-id header: the same on every retry and replay.")
    event_type: str
    status: Literal["pending", "delivered", "dead"]
    attempts: int = Field(description="Attempts in the current round (a replay starts a new round).")
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    dead_at: datetime | None
    attempt_log: list[AttemptOut]


class DeliveryList(BaseModel):
    items: list[DeliveryOut]
    next_cursor: int | None = None


class PingOut(BaseModel):
    """A test event sent, and what the receiver answered."""

    webhook_id: str = Field(description="The test event's webhook-id: its own, never an event's.")
    type: Literal["webhook.test"]
    sent_at: datetime
    delivered: bool = Field(description="The receiver answered 2xx.")
    http_status: int | None = Field(description="The receiver's status; null if none came (see error).")
    error: str | None = Field(
        description="timeout, a connection error, or webhook_url_refused: why no answer came."
    )
    response_excerpt: str = Field(description="Up to 500 characters of the receiver's answer.")
    duration_ms: int
