"""Request dependencies: the app's shared objects, the caller, and one clock reading."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, Request
from sqlalchemy import select

from service.abuse.ratelimit import limit_for, take_token
from service.identity.suspensions import blocking_suspension, refusal
from service.kit.clock import Clock
from service.kit.config import Settings
from service.kit.context import Actor, Caller
from service.kit.crypto import Crypto
from service.kit.db import Database
from service.kit.errors import Forbidden, Unauthorized
from service.models.registry import ApiClient, Organisation
from service.models.supervision import AccessSuspension


@dataclass
class AppState:
    """What the lifespan owns and every request shares."""

    settings: Settings
    db: Database
    clock: Clock
    crypto: Crypto


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.slotpool
    return state


State = Annotated[AppState, Depends(get_state)]


async def authenticate(request: Request, state: State) -> Caller:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing_credentials", "Send 'Authorization: Bearer <API key>'.")
    digest = state.crypto.api_key_digest(token.strip())
    now = state.clock.now()
    async with state.db.sessionmaker() as session:
        row = (
            await session.execute(
                select(
                    ApiClient,
                    Organisation,
                    blocking_suspension(now, client_id=ApiClient.id, organisation_id=Organisation.id),
                )
                .join(Organisation, Organisation.id == ApiClient.organisation_id)
                .where(ApiClient.key_digest == digest)
            )
        ).first()
        if row is None:
            raise Unauthorized("invalid_credentials", "The API key is not valid.")
        client, org, suspension_id = row
        if client.revoked_at is not None:
            raise Unauthorized("key_revoked", "This API key has been revoked.")
        if suspension_id is not None:
            # R14: the commission's action takes effect on the very next request.
            suspension = await session.get(AccessSuspension, suspension_id)
            assert suspension is not None
            raise refusal(suspension)
        # Every authenticated operation spends a token of its client's bucket (docs/abuse-limits.md).
        await take_token(
            session=session, client_id=client.id, now=now, limit=limit_for(state.settings, client.role)
        )
        await session.commit()
    caller = Caller(
        client_id=client.id,
        org_id=org.id,
        role=client.role,
        org_kind=org.kind,
        org_name=org.name,
        region_code=org.region_code,
    )
    request.state.caller = caller
    structlog.contextvars.bind_contextvars(client_id=client.id)  # in every later line of this request
    return caller


def require(*roles: str) -> Callable[..., Awaitable[Caller]]:
    """A dependency admitting only callers with one of ``roles``."""

    async def dependency(caller: Annotated[Caller, Depends(authenticate)]) -> Caller:
        if caller.role not in roles:
            raise Forbidden(
                "wrong_role", f"This endpoint is for {' or '.join(roles)} clients, not {caller.role}."
            )
        return caller

    return dependency


def actor_for(request: Request, state: AppState, caller: Caller) -> Actor:
    """The actor of this request, with its single clock reading."""
    return Actor.for_caller(
        caller, now=state.clock.now(), request_id=getattr(request.state, "request_id", None)
    )
