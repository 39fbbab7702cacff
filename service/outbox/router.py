"""Hospitals manage their webhook endpoints and dead letters; each sees only its own (OWASP API1)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from service.deps import State, actor_for, require
from service.kit.context import Caller
from service.kit.ids import MAX_ID, PathId, QueryId
from service.outbox import endpoints as service
from service.outbox.schemas import (
    DeliveryList,
    EndpointIn,
    EndpointList,
    EndpointOut,
    EndpointPatch,
    EndpointWithSecret,
    RotateSecretIn,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
Hospital = Annotated[Caller, Depends(require("hospital"))]
PROBLEM = {"content": {"application/problem+json": {}}, "description": "Refused: see `code`."}


def _with_secret(endpoint: EndpointOut, secret: str) -> EndpointWithSecret:
    return EndpointWithSecret(**endpoint.model_dump(), secret=secret)


@router.post("/endpoints", response_model=EndpointWithSecret, status_code=201, responses={422: PROBLEM})
async def register_endpoint(
    body: EndpointIn, request: Request, state: State, caller: Hospital
) -> EndpointWithSecret:
    """Register a receiver of the HIS; the answer carries its signing secret, shown this once."""
    actor = actor_for(request, state, caller)

    async def work(session: AsyncSession) -> EndpointWithSecret:
        endpoint, secret = await service.register_endpoint(
            session=session,
            actor=actor,
            crypto=state.crypto,
            hospital_id=caller.org_id,
            body=body,
            allow_loopback=state.settings.webhook_allow_loopback,
        )
        return _with_secret(service.endpoint_out(endpoint), secret)

    return await state.db.run(work)


@router.get("/endpoints", response_model=EndpointList)
async def list_endpoints(state: State, caller: Hospital) -> EndpointList:
    """The hospital's endpoints (never their secrets)."""
    async with state.db.sessionmaker() as session:
        endpoints = await service.list_endpoints(session=session, hospital_id=caller.org_id)
    return EndpointList(items=[service.endpoint_out(e) for e in endpoints])


@router.get("/endpoints/{endpoint_id}", response_model=EndpointOut, responses={404: PROBLEM})
async def get_endpoint(endpoint_id: PathId, state: State, caller: Hospital) -> EndpointOut:
    """One of the hospital's endpoints."""
    async with state.db.sessionmaker() as session:
        endpoint = await service.get_endpoint(
            session=session, hospital_id=caller.org_id, endpoint_id=endpoint_id
        )
    return service.endpoint_out(endpoint)


@router.patch("/endpoints/{endpoint_id}", response_model=EndpointOut, responses={404: PROBLEM, 422: PROBLEM})
async def update_endpoint(
    endpoint_id: PathId, body: EndpointPatch, request: Request, state: State, caller: Hospital
) -> EndpointOut:
    """Change the URL or event types; ``status: active`` re-enables an endpoint disabled by a 410."""
    actor = actor_for(request, state, caller)

    async def work(session: AsyncSession) -> EndpointOut:
        endpoint = await service.update_endpoint(
            session=session,
            actor=actor,
            hospital_id=caller.org_id,
            endpoint_id=endpoint_id,
            patch=body,
            allow_loopback=state.settings.webhook_allow_loopback,
        )
        return service.endpoint_out(endpoint)

    return await state.db.run(work)


@router.delete("/endpoints/{endpoint_id}", status_code=204, responses={404: PROBLEM})
async def delete_endpoint(endpoint_id: PathId, request: Request, state: State, caller: Hospital) -> Response:
    """Delete an endpoint and its pending and past deliveries."""
    actor = actor_for(request, state, caller)
    await state.db.run(
        lambda session: service.delete_endpoint(
            session=session, actor=actor, hospital_id=caller.org_id, endpoint_id=endpoint_id
        )
    )
    return Response(status_code=204)


@router.post(
    "/endpoints/{endpoint_id}/rotate-secret", response_model=EndpointWithSecret, responses={404: PROBLEM}
)
async def rotate_secret(
    endpoint_id: PathId, request: Request, state: State, caller: Hospital, body: RotateSecretIn | None = None
) -> EndpointWithSecret:
    """A new secret, shown once; requests are signed with both until the overlap ends."""
    actor = actor_for(request, state, caller)
    hours = state.settings.webhook_secret_overlap_hours
    if body is not None and body.overlap_hours is not None:
        hours = body.overlap_hours

    async def work(session: AsyncSession) -> EndpointWithSecret:
        endpoint, secret = await service.rotate_secret(
            session=session,
            actor=actor,
            crypto=state.crypto,
            hospital_id=caller.org_id,
            endpoint_id=endpoint_id,
            overlap=timedelta(hours=hours),
        )
        return _with_secret(service.endpoint_out(endpoint), secret)

    return await state.db.run(work)


@router.get("/deliveries", response_model=DeliveryList)
async def list_deliveries(
    state: State,
    caller: Hospital,
    status: Literal["dead", "pending", "delivered"] = "dead",
    endpoint_id: QueryId = None,
    cursor: Annotated[
        int | None, Query(gt=0, le=MAX_ID, description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DeliveryList:
    """The hospital's deliveries in one status (dead letters by default), with every attempt."""
    async with state.db.sessionmaker() as session:
        items, next_cursor = await service.list_deliveries(
            session=session,
            hospital_id=caller.org_id,
            status=status,
            endpoint_id=endpoint_id,
            after_id=cursor,
            limit=limit,
        )
    return DeliveryList(items=items, next_cursor=next_cursor)


@router.post(
    "/deliveries/{delivery_id}/replay",
    status_code=202,
    response_model=None,
    responses={404: PROBLEM, 409: PROBLEM},
)
async def replay_delivery(delivery_id: PathId, request: Request, state: State, caller: Hospital) -> Response:
    """Queue a dead letter again, with the same webhook-id, for a new round of retries."""
    actor = actor_for(request, state, caller)
    await state.db.run(
        lambda session: service.replay_delivery(
            session=session, actor=actor, hospital_id=caller.org_id, delivery_id=delivery_id
        )
    )
    return Response(status_code=202)
