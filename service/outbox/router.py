"""Hospitals and primary institutions manage their webhook endpoints and dead letters; each sees
only its own (OWASP API1)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from service.kit.context import Caller
from service.kit.ids import MAX_ID, PathId, QueryId
from service.outbox import endpoints as service
from service.outbox import ping as pings
from service.outbox.schemas import (
    DeliveryList,
    EndpointIn,
    EndpointList,
    EndpointOut,
    EndpointPatch,
    EndpointWithSecret,
    PingOut,
    RotateSecretIn,
)
from service.outbox.sending import Outcome
from service.outbox.urls import check_url
from service.web.contract import operation
from service.web.state import State
from service.web.unit import Unit, UnitRoute, reads, writes

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], route_class=UnitRoute)
# A hospital's HIS and a primary institution's backend alike; every call is scoped to the
# caller's organisation, and the types offered follow its role (docs/webhooks.md).
Owner = Annotated[Unit, writes("hospital", "primary")]
OwnerReads = Annotated[Unit, reads("hospital", "primary")]
# The URL check may resolve DNS, and a test event waits on its receiver. As a dependency declared
# after the unit it runs once the caller is authenticated and before the unit's transaction
# begins; with slow_dependencies the authentication's connection is back in the pool by then,
# so no connection waits on DNS or on a receiver.
OwnerSettingUrl = Annotated[Unit, writes("hospital", "primary", slow_dependencies=True)]
URL_PROBLEMS = [
    "webhook_url_invalid",
    "webhook_url_not_https",
    "webhook_url_unresolvable",
    "webhook_url_refused",
]


async def new_url(body: EndpointIn, state: State) -> str:
    """The URL being registered, if the service may call it."""
    return await check_url(body.url, allow_loopback=state.settings.webhook_allow_loopback)


async def changed_url(body: EndpointPatch, state: State) -> str | None:
    """The URL a patch sets, if the service may call it; None when the patch leaves it."""
    if body.url is None:
        return None
    return await check_url(body.url, allow_loopback=state.settings.webhook_allow_loopback)


@dataclass(frozen=True)
class SentPing:
    ping: pings.Ping
    outcome: Outcome


async def sent_ping(endpoint_id: PathId, request: Request, state: State) -> SentPing:
    """The endpoint's test event, claimed in a short transaction of its own and sent with no
    connection held. Declared after the unit, so the caller is authenticated (and of the right
    role) by then; the unit's own transaction then records the outcome."""
    caller: Caller = request.state.caller
    ping = await state.db.run(
        partial(
            pings.claim_ping,
            crypto=state.crypto,
            organisation_id=caller.org_id,
            for_institution=caller.role == "primary",
            endpoint_id=endpoint_id,
            now=state.clock.now(),
            lock_timeout_ms=state.settings.lock_timeout_ms,
        )
    )
    outcome = await pings.send_ping(ping, settings=state.settings, clock=state.clock)
    return SentPing(ping, outcome)


def _with_secret(endpoint: EndpointOut, secret: str) -> EndpointWithSecret:
    return EndpointWithSecret(**endpoint.model_dump(), secret=secret)


@router.post(
    "/endpoints",
    response_model=EndpointWithSecret,
    status_code=201,
    **operation(
        "registerWebhookEndpoint",
        "Register a webhook endpoint",
        problems=[*URL_PROBLEMS, "webhook_event_type_not_offered"],
    ),
)
async def register_endpoint(
    body: EndpointIn, unit: OwnerSettingUrl, url: Annotated[str, Depends(new_url)]
) -> EndpointWithSecret:
    """Register a receiver of the HIS or of the institution's backend; the answer carries its signing
    secret, shown this once."""
    endpoint, secret = await service.register_endpoint(
        session=unit.session,
        actor=unit.actor,
        crypto=unit.crypto,
        organisation_id=unit.caller.org_id,
        url=url,
        event_types=body.event_types,
    )
    return _with_secret(service.endpoint_out(endpoint), secret)


@router.get(
    "/endpoints", response_model=EndpointList, **operation("listWebhookEndpoints", "List webhook endpoints")
)
async def list_endpoints(unit: OwnerReads) -> EndpointList:
    """The caller's organisation's endpoints (never their secrets)."""
    endpoints = await service.list_endpoints(session=unit.session, organisation_id=unit.caller.org_id)
    return EndpointList(items=[service.endpoint_out(e) for e in endpoints])


@router.get(
    "/endpoints/{endpoint_id}",
    response_model=EndpointOut,
    **operation("getWebhookEndpoint", "Read a webhook endpoint", problems=["webhook_endpoint_not_found"]),
)
async def get_endpoint(endpoint_id: PathId, unit: OwnerReads) -> EndpointOut:
    """One of the organisation's endpoints."""
    endpoint = await service.get_endpoint(
        session=unit.session, organisation_id=unit.caller.org_id, endpoint_id=endpoint_id
    )
    return service.endpoint_out(endpoint)


@router.patch(
    "/endpoints/{endpoint_id}",
    response_model=EndpointOut,
    **operation(
        "updateWebhookEndpoint",
        "Change or re-enable a webhook endpoint",
        problems=["webhook_endpoint_not_found", "webhook_event_type_not_offered", *URL_PROBLEMS],
    ),
)
async def update_endpoint(
    endpoint_id: PathId,
    body: EndpointPatch,
    unit: OwnerSettingUrl,
    url: Annotated[str | None, Depends(changed_url)],
) -> EndpointOut:
    """Change the URL or event types; ``status: active`` re-enables an endpoint disabled by a 410."""
    endpoint = await service.update_endpoint(
        session=unit.session,
        actor=unit.actor,
        organisation_id=unit.caller.org_id,
        endpoint_id=endpoint_id,
        patch=body,
        url=url,
    )
    return service.endpoint_out(endpoint)


@router.delete(
    "/endpoints/{endpoint_id}",
    status_code=204,
    **operation(
        "deleteWebhookEndpoint", "Delete a webhook endpoint", problems=["webhook_endpoint_not_found"]
    ),
)
async def delete_endpoint(endpoint_id: PathId, unit: Owner) -> Response:
    """Delete an endpoint and its pending and past deliveries."""
    await service.delete_endpoint(
        session=unit.session, actor=unit.actor, organisation_id=unit.caller.org_id, endpoint_id=endpoint_id
    )
    return Response(status_code=204)


@router.post(
    "/endpoints/{endpoint_id}/rotate-secret",
    response_model=EndpointWithSecret,
    **operation(
        "rotateWebhookSecret", "Rotate an endpoint's signing secret", problems=["webhook_endpoint_not_found"]
    ),
)
async def rotate_secret(
    endpoint_id: PathId, unit: Owner, body: RotateSecretIn | None = None
) -> EndpointWithSecret:
    """A new secret, shown once; requests are signed with both until the overlap ends."""
    hours = unit.settings.webhook_secret_overlap_hours
    if body is not None and body.overlap_hours is not None:
        hours = body.overlap_hours
    endpoint, secret = await service.rotate_secret(
        session=unit.session,
        actor=unit.actor,
        crypto=unit.crypto,
        organisation_id=unit.caller.org_id,
        endpoint_id=endpoint_id,
        overlap=timedelta(hours=hours),
    )
    return _with_secret(service.endpoint_out(endpoint), secret)


@router.post(
    "/endpoints/{endpoint_id}/test",
    response_model=PingOut,
    **operation(
        "testWebhookEndpoint",
        "Send a signed test event to a webhook endpoint now",
        problems=["webhook_endpoint_not_found"],
    ),
)
async def test_endpoint(
    endpoint_id: PathId, unit: OwnerSettingUrl, sent: Annotated[SentPing, Depends(sent_ping)]
) -> PingOut:
    """Send a signed `webhook.test` event to the endpoint now and answer what its receiver said.

    Signed like every delivery, with a webhook-id of its own; not queued, not retried. One per
    endpoint every 10 seconds (429 `rate_limited` with Retry-After). Audited with its outcome.
    """
    await pings.record_ping(session=unit.session, actor=unit.actor, ping=sent.ping, outcome=sent.outcome)
    return PingOut(
        webhook_id=sent.ping.webhook_id,
        type="webhook.test",
        sent_at=sent.ping.at,
        delivered=sent.outcome.delivered,
        http_status=sent.outcome.http_status,
        error=sent.outcome.error,
        response_excerpt=sent.outcome.excerpt,
        duration_ms=sent.outcome.duration_ms,
    )


@router.get(
    "/deliveries",
    response_model=DeliveryList,
    **operation("listWebhookDeliveries", "List webhook deliveries and their attempts"),
)
async def list_deliveries(
    unit: OwnerReads,
    status: Literal["dead", "pending", "delivered"] = "dead",
    endpoint_id: QueryId = None,
    cursor: Annotated[
        int | None, Query(gt=0, le=MAX_ID, description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DeliveryList:
    """The organisation's deliveries in one status (dead letters by default), with every attempt."""
    items, next_cursor = await service.list_deliveries(
        session=unit.session,
        organisation_id=unit.caller.org_id,
        status=status,
        endpoint_id=endpoint_id,
        after_id=cursor,
        limit=limit,
    )
    return DeliveryList(items=items, next_cursor=next_cursor)


@router.post(
    "/deliveries/{delivery_id}/replay",
    status_code=202,
    response_class=Response,
    **operation(
        "replayWebhookDelivery",
        "Replay a dead letter",
        problems=["webhook_delivery_not_found", "webhook_delivery_not_dead"],
        responses={202: {"description": "Queued for a new round of retries."}},
    ),
)
async def replay_delivery(delivery_id: PathId, unit: Owner) -> Response:
    """Queue a dead letter again, with the same webhook-id, for a new round of retries."""
    await service.replay_delivery(
        session=unit.session, actor=unit.actor, organisation_id=unit.caller.org_id, delivery_id=delivery_id
    )
    return Response(status_code=202)
