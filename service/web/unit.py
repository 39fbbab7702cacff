"""One unit of work per request.

An endpoint declares what it is and who may call it with one parameter::

    @router.post("/referrals/{reference}/cancel")
    async def cancel(reference: str, body: CancelIn, unit: Annotated[Unit, writes("primary")]) -> ReferralOut:
        return await cancellation.cancel_by_institution(session=unit.session, actor=unit.actor, ...)

and its router is an ``APIRouter(route_class=UnitRoute)``. The route runs the endpoint
inside ``Database.run``: one session authenticates the API key, spends the client's
rate-limit token and commits that, then runs the endpoint's work in a second transaction
that is committed before the response is built. Serialization failures and deadlocks
re-run the work (not the authentication) with a fresh session.

- ``writes(...)``: ``SET LOCAL lock_timeout`` bounds every wait on a row lock; a lock
  not granted in time is 409 ``busy`` with ``Retry-After``.
- ``reads(...)``: the transaction is ``READ ONLY``, so the database itself refuses a write.
  A GET that records a read of personal data in the audit trail (R15) is a write unit.

An endpoint that must commit what it recorded and still refuse (a wrong hotline code is
counted, a refused booking is audited) returns the ``Problem``: the route commits, then
raises it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_type_hints

import structlog
from fastapi import Depends, Request
from fastapi.routing import APIRoute
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from service.identity.authentication import authenticate, bearer_token
from service.kit.config import Settings
from service.kit.context import Actor, Caller
from service.kit.crypto import Crypto
from service.kit.dberrors import database_unavailable
from service.kit.errors import DatabaseUnavailable, Forbidden, Problem
from service.web.state import AppState


@dataclass(frozen=True)
class Unit:
    """What an endpoint works with: one session, who is acting, and one clock reading."""

    session: AsyncSession
    caller: Caller
    actor: Actor
    crypto: Crypto
    settings: Settings

    @property
    def now(self) -> datetime:
        return self.actor.now


class Opening:
    """What the ``writes``/``reads`` dependency resolves to: the authenticated caller and the
    session that authenticated it, which the unit of work continues (``UnitRoute``)."""

    def __init__(self, request: Request, *, roles: tuple[str, ...], write: bool, hold: bool) -> None:
        self.request = request
        self.hold = hold
        self.state: AppState = request.app.state.slotpool
        self.roles = roles
        self.write = write
        self.connection: AsyncConnection | None = None
        self.session: AsyncSession | None = None
        self.caller: Caller | None = None

    async def release(self) -> None:
        """Close the session and give its connection back to the pool (idempotent)."""
        if self.session is not None:
            await self.session.close()
        if self.connection is not None:
            await self.connection.close()
        self.session = self.connection = None

    async def authenticate(self) -> None:
        """Find the caller, spend its rate-limit token and commit that: a refused request
        still spends its token, and the bucket's row is not held while the work runs."""
        token = bearer_token(self.request.headers.get("authorization", ""))
        state = self.state
        if self.hold:
            # One connection for the whole request: the session commits the token, then
            # continues on the same connection for the work, without a second pool checkout.
            try:
                self.connection = await state.db.engine.connect()
            except Exception as exc:
                if database_unavailable(exc):
                    raise DatabaseUnavailable() from exc
                raise
            self.session = state.db.sessionmaker(bind=self.connection)
        else:
            # The connection goes back to the pool at the token's commit, and the work checks
            # one out again: nothing is held while the endpoint's other dependencies wait.
            self.session = state.db.sessionmaker()

        async def work(session: AsyncSession) -> Caller:
            if state.clock_sync is not None:
                await state.clock_sync(session)
            return await authenticate(
                session=session,
                key_digest=state.crypto.api_key_digest(token),
                now=state.clock.now(),
                settings=state.settings,
            )

        caller = await state.db.run(work, session=self.session, keep_open=True)
        self.request.state.caller = caller
        structlog.contextvars.bind_contextvars(client_id=caller.client_id)  # in every later line
        if self.roles and caller.role not in self.roles:
            await self.release()
            raise Forbidden(
                "wrong_role", f"This endpoint is for {' or '.join(self.roles)} clients, not {caller.role}."
            )
        self.caller = caller

    async def run(self, work: Callable[[Unit], Awaitable[Any]]) -> Any:
        """Run ``work`` in the unit's transaction, commit it, and answer (or refuse)."""
        state = self.state
        caller = self.caller
        assert caller is not None

        async def attempt(session: AsyncSession) -> Any:
            if self.write:
                await session.execute(
                    text(f"SET LOCAL lock_timeout = '{int(state.settings.lock_timeout_ms)}ms'")
                )
            else:
                await session.connection(execution_options={"postgresql_readonly": True})
            actor = Actor.for_caller(
                caller, now=state.clock.now(), request_id=getattr(self.request.state, "request_id", None)
            )
            unit = Unit(
                session=session, caller=caller, actor=actor, crypto=state.crypto, settings=state.settings
            )
            return await work(unit)

        try:
            result = await state.db.run(attempt, session=self.session)
        finally:
            await self.release()
        if isinstance(result, Problem):
            raise result  # what it recorded is committed; now the caller hears the refusal
        return result


def _dependency(roles: tuple[str, ...], *, write: bool, hold: bool) -> Any:
    async def opening(request: Request) -> AsyncIterator[Opening]:
        opened = Opening(request, roles=roles, write=write, hold=hold)
        try:
            await opened.authenticate()
            yield opened
        finally:
            # Normally closed by its unit already; this covers a request refused between the
            # dependency and the endpoint (a malformed body), so no session is ever left open.
            await opened.release()

    opening.slotpool_unit = (roles, write)  # type: ignore[attr-defined]  # read by web/contract.py
    return Depends(opening)


def writes(*roles: str, slow_dependencies: bool = False) -> Any:
    """The unit of an endpoint that changes state, for callers with one of ``roles`` (any if none).

    ``slow_dependencies``: the endpoint's other dependencies wait on the network (a webhook
    URL's DNS check), so no connection is held between authentication and the work.
    """
    return _dependency(roles, write=True, hold=not slow_dependencies)


def reads(*roles: str) -> Any:
    """The read-only unit of an endpoint that changes nothing, for callers with one of ``roles``."""
    return _dependency(roles, write=False, hold=True)


def in_unit(endpoint: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``endpoint``, run inside the unit its ``writes``/``reads`` parameter opened.

    The wrapper shows FastAPI the endpoint's own signature, with its annotations resolved, so
    parameters, the response model and the OpenAPI document are exactly the endpoint's.
    """
    assert inspect.iscoroutinefunction(endpoint), f"{endpoint.__qualname__}: endpoints are async"
    hints = get_type_hints(endpoint, include_extras=True)
    signature = inspect.signature(endpoint)

    @functools.wraps(endpoint)
    async def run(**values: Any) -> Any:
        openings = [name for name, value in values.items() if isinstance(value, Opening)]
        if not openings:
            return await endpoint(**values)
        (name,) = openings
        opening: Opening = values[name]
        return await opening.run(lambda unit: endpoint(**{**values, name: unit}))

    run.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[
            p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()
        ],
        # ``-> None`` resolves to NoneType, which FastAPI would take for a body model.
        return_annotation=None
        if hints.get("return") is type(None)
        else hints.get("return", signature.return_annotation),
    )
    return run


class UnitRoute(APIRoute):
    """A route whose endpoint runs inside the unit of work of its ``Unit`` parameter."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, in_unit(endpoint), **kwargs)
