"""Webhook endpoints of hospitals and primary institutions, their signing secrets, dead letters and replays."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.service import record
from service.kit.clock import instant
from service.kit.context import Actor
from service.kit.crypto import Crypto
from service.kit.errors import Conflict, NotFound, Unprocessable
from service.models.events import EVENT_TYPES, INSTITUTION_EVENT_TYPES, Event, webhook_id
from service.models.webhooks import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from service.outbox.events import notify_dispatchers
from service.outbox.schemas import (
    AttemptOut,
    DeliveryOut,
    EndpointOut,
    EndpointPatch,
)
from service.outbox.signing import new_secret

SECRET_COLUMN = "webhook_endpoints.secret"
DeliveryStatus = Literal["pending", "delivered", "dead"]


def audited_hospital(actor: Actor, organisation_id: int) -> int | None:
    """The audit entry's hospital: the owner when a hospital acts on its endpoints; a primary
    institution's endpoint is recorded against the acting organisation (``actor_org_id``) only."""
    return organisation_id if actor.label == "hospital" else None


def offered_event_types(role: str) -> tuple[str, ...]:
    """The types an endpoint of an organisation of ``role`` may receive: a primary
    institution's are about its own referrals and residents (docs/webhooks.md)."""
    return INSTITUTION_EVENT_TYPES if role == "primary" else EVENT_TYPES


def _checked_event_types(event_types: Sequence[str], role: str) -> list[str]:
    offered = offered_event_types(role)
    refused = sorted(set(event_types) - set(offered))
    if refused:
        raise Unprocessable(
            "webhook_event_type_not_offered",
            f"A {role} organisation's endpoint cannot receive {', '.join(refused)}.",
            offered=list(offered),
        )
    return sorted(set(event_types))


def endpoint_out(endpoint: WebhookEndpoint) -> EndpointOut:
    return EndpointOut(
        id=endpoint.id,
        url=endpoint.url,
        event_types=list(endpoint.event_types),
        status="active" if endpoint.status == "active" else "disabled",
        disabled_reason=endpoint.disabled_reason,
        previous_secret_expires_at=endpoint.previous_secret_expires_at,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
    )


def signing_secrets(*, crypto: Crypto, endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The secrets to sign with now: the current one, and the previous one while its overlap lasts."""
    current = [crypto.decrypt(endpoint.secret_enc, column=SECRET_COLUMN)]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret_enc is not None and expires is not None and now < expires:
        current.append(crypto.decrypt(endpoint.previous_secret_enc, column=SECRET_COLUMN))
    return current


async def register_endpoint(
    *,
    session: AsyncSession,
    actor: Actor,
    crypto: Crypto,
    organisation_id: int,
    url: str,
    event_types: Sequence[str],
) -> tuple[WebhookEndpoint, str]:
    """Register an endpoint with a fresh secret; returns the secret, which is never shown again.

    ``url`` has passed ``check_url`` (which may resolve DNS: before the transaction, not in it).
    """
    secret = new_secret()
    endpoint = WebhookEndpoint(
        organisation_id=organisation_id,
        url=url,
        event_types=_checked_event_types(event_types, actor.label),
        secret_enc=crypto.encrypt(secret, column=SECRET_COLUMN),
        status="active",
        created_at=actor.now,
        updated_at=actor.now,
    )
    session.add(endpoint)
    await session.flush()
    await record(
        session=session,
        actor=actor,
        action="webhook.endpoint_registered",
        hospital_id=audited_hospital(actor, organisation_id),
        detail={"endpoint_id": endpoint.id, "before": None, "after": _audit_view(endpoint)},
    )
    return endpoint, secret


def _audit_view(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """An endpoint as the audit trail records it: never its secrets."""
    return {"url": endpoint.url, "event_types": list(endpoint.event_types), "status": endpoint.status}


async def list_endpoints(*, session: AsyncSession, organisation_id: int) -> list[WebhookEndpoint]:
    """The organisation's endpoints, oldest first."""
    rows = await session.scalars(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.organisation_id == organisation_id)
        .order_by(WebhookEndpoint.id)
    )
    return list(rows)


async def get_endpoint(
    *, session: AsyncSession, organisation_id: int, endpoint_id: int, lock: bool = False
) -> WebhookEndpoint:
    """One of the organisation's endpoints; another's is 'not found' (OWASP API1)."""
    query = select(WebhookEndpoint).where(
        WebhookEndpoint.id == endpoint_id, WebhookEndpoint.organisation_id == organisation_id
    )
    endpoint = await session.scalar(query.with_for_update() if lock else query)
    if endpoint is None:
        raise NotFound("webhook_endpoint_not_found", "No such webhook endpoint of this organisation.")
    return endpoint


async def update_endpoint(
    *,
    session: AsyncSession,
    actor: Actor,
    organisation_id: int,
    endpoint_id: int,
    patch: EndpointPatch,
    url: str | None,
) -> WebhookEndpoint:
    """Change the URL or the event types, or re-enable a disabled endpoint.

    ``url`` is ``patch.url`` once it has passed ``check_url`` (None when the patch leaves the URL).
    """
    endpoint = await get_endpoint(
        session=session, organisation_id=organisation_id, endpoint_id=endpoint_id, lock=True
    )
    changes: dict[str, Any] = {}
    before = _audit_view(endpoint)
    if url is not None and url != endpoint.url:
        endpoint.url = url
        changes["url"] = url
    if patch.event_types is not None:
        endpoint.event_types = _checked_event_types(patch.event_types, actor.label)
        changes["event_types"] = endpoint.event_types
    if patch.status == "active" and endpoint.status != "active":
        endpoint.status = "active"
        endpoint.disabled_reason = None
        changes["status"] = "active"
        # Its queue waited while disabled: the head goes now, not at its old retry time.
        await session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.endpoint_id == endpoint.id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at > actor.now,
            )
            .values(next_attempt_at=actor.now)
        )
        await notify_dispatchers(session=session)
    if changes:
        endpoint.updated_at = actor.now
        await record(
            session=session,
            actor=actor,
            action="webhook.endpoint_updated",
            hospital_id=audited_hospital(actor, organisation_id),
            detail={"endpoint_id": endpoint.id, "before": before, "after": _audit_view(endpoint)},
        )
    await session.flush()
    return endpoint


async def delete_endpoint(
    *, session: AsyncSession, actor: Actor, organisation_id: int, endpoint_id: int
) -> None:
    """Delete an endpoint with its deliveries and attempts (the events stay)."""
    endpoint = await get_endpoint(
        session=session, organisation_id=organisation_id, endpoint_id=endpoint_id, lock=True
    )
    await record(
        session=session,
        actor=actor,
        action="webhook.endpoint_deleted",
        hospital_id=audited_hospital(actor, organisation_id),
        detail={"endpoint_id": endpoint.id, "before": _audit_view(endpoint), "after": None},
    )
    await session.delete(endpoint)
    await session.flush()


async def rotate_secret(
    *,
    session: AsyncSession,
    actor: Actor,
    crypto: Crypto,
    organisation_id: int,
    endpoint_id: int,
    overlap: timedelta,
) -> tuple[WebhookEndpoint, str]:
    """A new secret; the current one stays valid for ``overlap`` (a secret older than that is dropped)."""
    endpoint = await get_endpoint(
        session=session, organisation_id=organisation_id, endpoint_id=endpoint_id, lock=True
    )
    before = _secret_state(endpoint)
    secret = new_secret()
    if overlap > timedelta(0):
        endpoint.previous_secret_enc = endpoint.secret_enc
        endpoint.previous_secret_expires_at = actor.now + overlap
    else:
        endpoint.previous_secret_enc = None
        endpoint.previous_secret_expires_at = None
    endpoint.secret_enc = crypto.encrypt(secret, column=SECRET_COLUMN)
    endpoint.updated_at = actor.now
    await record(
        session=session,
        actor=actor,
        action="webhook.secret_rotated",
        hospital_id=audited_hospital(actor, organisation_id),
        detail={
            "endpoint_id": endpoint.id,
            "previous_secret_expires_at": (
                instant(endpoint.previous_secret_expires_at) if endpoint.previous_secret_expires_at else None
            ),
            "before": before,
            "after": _secret_state(endpoint),
        },
    )
    await session.flush()
    return endpoint, secret


def _secret_state(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """Which secrets sign, by when they were set, never what they are."""
    return {
        "secrets_signing": 1 if endpoint.previous_secret_enc is None else 2,
        "previous_secret_expires_at": (
            instant(endpoint.previous_secret_expires_at) if endpoint.previous_secret_expires_at else None
        ),
    }


async def list_deliveries(
    *,
    session: AsyncSession,
    organisation_id: int,
    status: str,
    endpoint_id: int | None,
    after_id: int | None,
    limit: int,
) -> tuple[list[DeliveryOut], int | None]:
    """The organisation's deliveries in one status, oldest first, with every attempt; keyset paging."""
    query = (
        select(WebhookDelivery, Event.type, Event.public_id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .join(Event, Event.id == WebhookDelivery.event_id)
        .where(WebhookEndpoint.organisation_id == organisation_id, WebhookDelivery.status == status)
        .order_by(WebhookDelivery.id)
        .limit(limit + 1)
    )
    if endpoint_id is not None:
        query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
    if after_id is not None:
        query = query.where(WebhookDelivery.id > after_id)
    rows = (await session.execute(query)).all()
    page = rows[:limit]
    attempts: dict[int, list[AttemptOut]] = {}
    if page:
        for attempt in await session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_([d.id for d, _, _ in page]))
            .order_by(WebhookAttempt.id)
        ):
            attempts.setdefault(attempt.delivery_id, []).append(
                AttemptOut(
                    attempted_at=attempt.attempted_at,
                    http_status=attempt.http_status,
                    error=attempt.error,
                    response_excerpt=attempt.response_excerpt,
                    duration_ms=attempt.duration_ms,
                )
            )
    items = [
        DeliveryOut(
            id=delivery.id,
            endpoint_id=delivery.endpoint_id,
            webhook_id=webhook_id(delivery.event_id, public_id),
            event_type=event_type,
            status=cast(DeliveryStatus, delivery.status),
            attempts=delivery.attempts,
            next_attempt_at=delivery.next_attempt_at if delivery.status == "pending" else None,
            created_at=delivery.created_at,
            delivered_at=delivery.delivered_at,
            dead_at=delivery.dead_at,
            attempt_log=attempts.get(delivery.id, []),
        )
        for delivery, event_type, public_id in page
    ]
    next_cursor = page[-1][0].id if len(rows) > limit else None
    return items, next_cursor


async def replay_delivery(
    *, session: AsyncSession, actor: Actor, organisation_id: int, delivery_id: int
) -> WebhookDelivery:
    """Put a dead letter back in its endpoint's queue for a new round of retries, same webhook-id."""
    delivery = await session.scalar(
        select(WebhookDelivery)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.id == delivery_id, WebhookEndpoint.organisation_id == organisation_id)
        .with_for_update(of=WebhookDelivery)
    )
    if delivery is None:
        raise NotFound("webhook_delivery_not_found", "No such webhook delivery of this organisation.")
    if delivery.status != "dead":
        raise Conflict(
            "webhook_delivery_not_dead", f"Only dead letters are replayed; this one is {delivery.status}."
        )
    delivery.status = "pending"
    delivery.attempts = 0
    delivery.next_attempt_at = actor.now
    delivery.dead_at = None
    await record(
        session=session,
        actor=actor,
        action="webhook.delivery_replayed",
        hospital_id=audited_hospital(actor, organisation_id),
        detail={
            "delivery_id": delivery.id,
            "endpoint_id": delivery.endpoint_id,
            "event_id": delivery.event_id,
        },
    )
    await notify_dispatchers(session=session)
    await session.flush()
    return delivery
