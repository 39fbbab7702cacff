"""create_app(): the lifespan owns the engine, the clock, the crypto keys and the loops."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.abuse.body_limit import BodyLimit
from service.attendance.router import router as attendance_router
from service.availability.router import router as availability_router
from service.fhir.router import outcome as fhir_outcome
from service.fhir.router import router as fhir_router
from service.jobs import background_loops
from service.kit.clock import Clock, SandboxClock
from service.kit.config import Settings, get_settings
from service.kit.crypto import Crypto
from service.kit.db import Database
from service.kit.dberrors import database_unavailable
from service.kit.errors import install_handlers, problem_response
from service.kit.logging import RequestContext, configure_logging
from service.models.readiness import schema_state
from service.outbox.router import router as webhooks_router
from service.policy.router import router as policy_router
from service.referrals.router import router as referrals_router
from service.referrals.waitlist.router import router as waitlist_router
from service.registry.router import router as registry_router
from service.reports.router import router as reports_router
from service.residents.router import router as residents_router
from service.sandbox.router import router as sandbox_router
from service.sandbox.service import clock_sync
from service.signals.router import router as signals_router
from service.slip.router import router as slip_router
from service.slots.router import router as slots_router
from service.supervision.router import router as supervision_router
from service.web.contract import finish_openapi, operation
from service.web.docs import install_docs
from service.web.state import AppState

log = structlog.get_logger("slotpool.http")


API_DESCRIPTION = """\
Every call but the health checks and `/fhir/metadata` carries `Authorization: Bearer <API key>`.
A key belongs to one organisation and one role; each operation lists the roles it admits
(`x-roles`) and every object is checked against the caller's organisation.

Every refusal is RFC 9457 `application/problem+json` (`Problem`) with a stable `code`; each
response lists the codes it can carry (`x-problem-codes`). Under `/fhir` refusals are FHIR
`OperationOutcome`s with the same codes. 4xx is always the caller's; 5xx is ours.
"""
READY = {
    "type": "object",
    "properties": {
        "status": {"const": "ready"},
        "schema": {"type": "string", "description": "The schema's Alembic revision."},
        "build": {"type": "string", "description": "This build's head, when the schema is ahead of it."},
    },
    "required": ["status", "schema"],
}


class SlotpoolApp(FastAPI):
    """FastAPI with RequestContext outside Starlette's own error layer (see service/kit/logging.py)."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestContext(super().build_middleware_stack())

    def openapi(self) -> dict[str, Any]:
        """FastAPI's document, completed once by ``finish_openapi`` (docs/contract.md)."""
        if self.openapi_schema is None:
            self.openapi_schema = finish_openapi(self, super().openapi())
        return self.openapi_schema


class RefuseNulInUrl:
    """422 for NUL characters in a path or query string (under /fhir an OperationOutcome, 400);
    bodies are checked by ``ApiModel``.

    Pure ASGI: Starlette's ``@app.middleware("http")`` would add a task and a body stream
    to every request for what is one string test.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            if "\x00" in request.url.path or "\x00" in unquote(request.url.query):
                detail = "NUL characters are not allowed in the URL."
                response: Response
                if request.url.path.startswith("/fhir/"):
                    # /fhir answers OperationOutcomes, and a malformed search is FHIR's 400.
                    response = fhir_outcome(400, "invalid_search_parameter", detail)
                else:
                    response = problem_response(422, "invalid_request", detail, request)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    database_url: str,
    clock: Clock | None = None,
    run_loops: bool | None = None,
) -> FastAPI:
    """The ASGI app. Tests pass their own clock and usually run the loops themselves."""
    loops_enabled = settings.run_loops if run_loops is None else run_loops
    if settings.sandbox and not isinstance(clock, SandboxClock):
        clock = SandboxClock(wall=clock)  # the given clock (a test's) is the wall underneath

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(
            database_url, pool_size=settings.db_pool_size, behind_pgbouncer=settings.db_behind_pgbouncer
        )
        state = AppState(
            settings=settings,
            db=db,
            clock=clock or Clock(),
            crypto=Crypto.from_settings(settings),
            clock_sync=clock_sync(clock) if isinstance(clock, SandboxClock) else None,
        )
        app.state.slotpool = state
        stop = asyncio.Event()
        tasks = []
        if state.clock_sync is not None and loops_enabled:
            # The loops start on the sandbox's time, not the wall's, then follow it.
            await db.run(state.clock_sync)
        if loops_enabled:
            tasks = [
                asyncio.create_task(loop)
                for loop in background_loops(
                    db=db,
                    clock=state.clock,
                    crypto=state.crypto,
                    settings=settings,
                    database_url=database_url,
                    stop=stop,
                )
            ]
        # What is alive now (modules, models, schemas, the engine) lives as long as the process:
        # a full collection need not walk it again. A large request (a push of 10,000 slots makes
        # some 200,000 objects) otherwise pays for walking the whole app at every full collection.
        gc.freeze()
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await db.dispose()
            gc.unfreeze()  # an app stopped in a process that goes on (a test) leaves nothing pinned

    app = SlotpoolApp(
        title="slotpool",
        version="0.1.0",
        summary="Referral slot pool: hospitals reserve outpatient slots for family doctors (R1–R20).",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from the package by install_docs, not from a CDN
        redoc_url=None,
    )
    install_docs(app)
    install_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    app.add_middleware(RefuseNulInUrl)

    @app.get("/healthz", tags=["operations"], **operation("getHealth", "Liveness"))
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        **operation(
            "getReadiness",
            "Readiness: database and schema",
            responses={200: {"description": "Ready.", "content": {"application/json": {"schema": READY}}}},
            problems=["database_unavailable", "migrations_pending", "schema_incompatible"],
        ),
    )
    async def readyz(request: Request) -> Response:
        """Readiness: the database answers and its schema is one this build serves (at this
        build's head, or ahead of it through expand-only migrations; docs/operations.md)."""
        state: AppState = request.app.state.slotpool
        try:
            async with state.db.engine.connect() as conn:
                schema = await schema_state(conn)
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            log.warning("readiness check failed", error=type(exc).__name__)
            return problem_response(503, "database_unavailable", "The database does not answer.", request)
        if schema.verdict == "migrations_pending":
            return problem_response(
                503,
                "migrations_pending",
                f"Schema is at {schema.schema}, this build's head is {schema.head}: run `slotpool migrate`.",
                request,
            )
        if schema.verdict == "schema_incompatible":
            return problem_response(
                503,
                "schema_incompatible",
                f"Schema is at {schema.schema}, which serves builds from {schema.oldest_build} on; "
                f"this build is at {schema.head}.",
                request,
            )
        body = {"status": "ready", "schema": schema.schema}
        if schema.schema != schema.head:
            body["build"] = schema.head
        return JSONResponse(body)

    for router in (
        registry_router,
        policy_router,
        residents_router,
        slots_router,
        referrals_router,
        waitlist_router,
        attendance_router,
        slip_router,
        webhooks_router,
        fhir_router,
        supervision_router,
        signals_router,
        reports_router,
        availability_router,
        sandbox_router,
    ):
        app.include_router(router)
    return app


def app_from_environment() -> FastAPI:
    """The app of one ``serve --workers`` process: settings, database and loops from the environment."""
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    if not settings.database_url:
        raise RuntimeError("SLOTPOOL_DATABASE_URL is not set; `slotpool serve --workers` sets it")
    return create_app(settings, database_url=settings.database_url)
