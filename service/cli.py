"""The ``slotpool`` command: serve, migrate, worker, bootstrap, create-client, openapi."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
from datetime import timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from service.kit.cli_failures import CommandRefused, StartupError, ensure_port_free, listen_on, reported
from service.kit.clock import Clock, SandboxClock, instant
from service.kit.config import Settings, get_settings
from service.kit.context import Actor
from service.kit.crypto import Crypto
from service.kit.db import Database, asyncpg_url
from service.kit.errors import Problem
from service.kit.logging import configure_logging
from service.kit.metrics import serve_metrics
from service.models.migrations import RuntimeRole, RuntimeRoleError, migrate, url_user, with_user
from service.registry import commands

_embedded_server: Any = None  # kept referenced so the server lives as long as the process


def _embedded_owner_url(settings: Settings) -> str:
    """Start (or reuse) the embedded PostgreSQL; the URL of its superuser, the schema owner."""
    global _embedded_server
    from service.kit import embedded

    if _embedded_server is None:
        _embedded_server = embedded.start(settings.data_dir)
        print(f"embedded PostgreSQL: data in {settings.data_dir / 'pgdata'}", file=sys.stderr)
    url = embedded.server_url(_embedded_server)
    asyncio.run(embedded.ensure_database(url))
    return url


def migration_url(settings: Settings) -> str:
    """Who runs migrations: SLOTPOOL_MIGRATION_DATABASE_URL, else DATABASE_URL (one role for
    both, not recommended), else the embedded server's owner."""
    if settings.migration_database_url:
        return settings.migration_database_url
    if settings.database_url:
        return settings.database_url
    return _embedded_owner_url(settings)


SINGLE_ROLE_WARNING = (
    "warning: DATABASE_URL logs in as the schema owner, which could rewrite the audit trail; set "
    "SLOTPOOL_MIGRATION_DATABASE_URL to the owner and DATABASE_URL to a runtime role (docs/operations.md)"
)


def runtime_role(settings: Settings, owner_url: str) -> RuntimeRole | None:
    """The role requests run as (DATABASE_URL's user, or ``runtime_role`` on the embedded
    server); None when it is the owner itself, which gets no grants of its own."""
    if not settings.database_url:
        return RuntimeRole(settings.runtime_role)
    user = url_user(settings.database_url)
    if not user or user == url_user(owner_url):
        return None
    return RuntimeRole(user, password=make_url(asyncpg_url(settings.database_url)).password)


async def seed_presets(session: AsyncSession) -> int:
    """The built-in policy presets, which ``migrate`` installs under its lock once the schema is at head."""
    from service.policy.service import install_presets

    return await install_presets(session=session, actor=Actor.system("cli", now=Clock().now()))


def run_migrations(settings: Settings) -> None:
    """Upgrade to head and bring the runtime role's grants in step, as the owner, under the
    migration lock. Exits with a one-line reason when the runtime role needs the operator."""
    owner = migration_url(settings)
    runtime = runtime_role(settings, owner)
    try:
        asyncio.run(migrate(owner, runtime, seed=seed_presets))
    except RuntimeRoleError as exc:
        raise CommandRefused("migrate", str(exc)) from exc
    if runtime is None:
        # After the work, so that a failure stays one or two lines of its own.
        print(SINGLE_ROLE_WARNING, file=sys.stderr)


def resolve_database_url(settings: Settings) -> str:
    """The URL requests are served through: DATABASE_URL; or, on the embedded development
    default, the runtime role's login on the embedded server's socket, after migrating (there
    the process is also the owner, so development runs with the same grants as production)."""
    if settings.database_url:
        return settings.database_url
    run_migrations(settings)
    return with_user(_embedded_owner_url(settings), settings.runtime_role)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> None:
    run_migrations(settings)
    print("migrations applied; built-in policies present; runtime role grants up to date")


SANDBOX_IN_PRODUCTION = (
    "production refuses --sandbox: a sandbox's clients move its clock",
    "run the sandbox in development, on a database of its own",
)


def sandbox_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """The settings with ``serve --sandbox`` applied; production refuses it outright."""
    if not getattr(args, "sandbox", False):
        return settings
    if settings.env == "production":
        raise StartupError(*SANDBOX_IN_PRODUCTION)
    return settings.model_copy(update={"sandbox": True})


def start_sandbox(command: str, url: str) -> timedelta:
    """Claim the database as a sandbox (or confirm it is one) and return how far its clock
    runs ahead; a database that has served on the wall clock is refused in one line."""
    from service.sandbox.service import SandboxRefused, claim_sandbox, read_offset

    async def main() -> tuple[bool, timedelta]:
        db = Database(url, pool_size=1)
        try:
            made = await db.run(lambda session: claim_sandbox(session, now=Clock().now()))
            return made, await db.run(read_offset)
        finally:
            await db.dispose()

    try:
        made, offset = asyncio.run(main())
    except SandboxRefused as exc:
        raise CommandRefused(command, str(exc)) from exc
    clock = SandboxClock()
    clock.adopt(offset)
    what = "this database is now a sandbox" if made else "sandbox"
    print(f"{what}: its clock reads {instant(clock.now().replace(microsecond=0))}", file=sys.stderr)
    return offset


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    from service.app import create_app

    settings = sandbox_settings(args, settings)
    # Bound and held from here on: a taken port fails now, before anything is seeded or printed.
    listener = listen_on(args.host, args.port, what="--port")
    if args.migrate and settings.database_url:
        run_migrations(settings)
    url = resolve_database_url(settings)  # the embedded default migrates here
    clock: Clock = Clock()
    if settings.sandbox:
        sandbox_clock = SandboxClock()
        sandbox_clock.adopt(start_sandbox("serve", url))
        clock = sandbox_clock
    if args.demo:
        from service.demo import print_demo_keys, roll_forward_in_background, seed_demo

        keys = asyncio.run(seed_demo(url, settings, clock=clock))
        print_demo_keys(keys, host=args.host, port=args.port, now=clock.now())
        # The demo's hospitals keep pushing: two weeks of sessions ahead, every day it runs.
        roll_forward_in_background(url, settings)
    if args.workers == 1:
        start_metrics(settings)
        app = create_app(settings, database_url=url, run_loops=not args.no_loops)
        serve_on(listener, app)
        return
    # Several processes share the port; each builds its app from the environment, so the
    # resolved database (the embedded one included), --no-loops and --sandbox travel there.
    # Every job is safe in several processes at once (service/jobs.py), so each worker runs them.
    os.environ["SLOTPOOL_DATABASE_URL"] = url
    os.environ["SLOTPOOL_RUN_LOOPS"] = "false" if args.no_loops else "true"
    os.environ["SLOTPOOL_SANDBOX"] = "true" if settings.sandbox else "false"
    start_metrics(settings, multiprocess=True)
    serve_on(listener, "service.app:app_from_environment", workers=args.workers)


def serve_on(listener: socket.socket, app: Any, *, workers: int = 1) -> None:
    """uvicorn on the socket bound at the start, as ``uvicorn.run`` would on its own."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(app, factory=workers > 1, workers=workers, log_level="warning")
    server = uvicorn.Server(config)
    try:
        if workers == 1:
            config.load_app()
            server.run(sockets=[listener])
        else:
            # uvicorn's supervisor: it restarts a worker that dies, and on SIGTERM or SIGINT stops
            # them all gracefully and returns (exit status 0, where one process leaves with 143).
            Multiprocess(config, sockets=[listener]).run()
    except KeyboardInterrupt:  # as uvicorn.run: Ctrl-C is a normal stop
        pass
    if workers == 1 and not server.started:
        raise SystemExit(3)  # uvicorn's own status for a server that failed to start


# How long the worker waits, once told to stop, for its loops to finish their passes.
WORKER_STOP_SECONDS = 10.0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> None:
    from service.jobs import background_loops

    start_metrics(settings)
    url = resolve_database_url(settings)
    clock: Clock = Clock()
    if settings.sandbox:  # SLOTPOOL_SANDBOX=true (production refuses it in the settings)
        sandbox_clock = SandboxClock()
        sandbox_clock.adopt(start_sandbox("worker", url))
        clock = sandbox_clock

    stop = asyncio.Event()
    received: list[int] = []

    def stopped_by(signum: int) -> None:
        received.append(signum)
        stop.set()

    async def main() -> None:
        db = Database(url, pool_size=settings.db_pool_size, behind_pgbouncer=settings.db_behind_pgbouncer)
        # SIGTERM and SIGINT end the loops the way serve's lifespan does: each finishes its
        # pass and returns, so no transaction is cut off and every connection is closed.
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopped_by, signum)
        tasks = [
            asyncio.create_task(work)
            for work in background_loops(
                db=db,
                clock=clock,
                crypto=Crypto.from_settings(settings),
                settings=settings,
                database_url=url,
                stop=stop,
            )
        ]
        try:
            await stop.wait()
            _, late = await asyncio.wait(tasks, timeout=WORKER_STOP_SECONDS)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await db.dispose()

    asyncio.run(main())
    raise SystemExit(128 + received[0])


def start_metrics(settings: Settings, *, multiprocess: bool = False) -> None:
    """Prometheus on SLOTPOOL_METRICS_PORT (unset: not served); never on the API port.

    ``multiprocess``: the figures are the sum of ``serve --workers``' processes, which write
    them to a directory of their own that this process reads at every scrape.
    """
    if settings.metrics_port is None:
        return
    ensure_port_free(settings.metrics_host, settings.metrics_port, what="SLOTPOOL_METRICS_PORT")
    serve_metrics(settings.metrics_port, settings.metrics_host, multiprocess=multiprocess)


def cmd_bootstrap(args: argparse.Namespace, settings: Settings) -> None:
    from service.registry.bootstrap import Bootstrapped, bootstrap_region, divisions_for

    try:
        divisions_for(args.region)  # an unknown code is refused before any database is touched
    except Problem as problem:
        raise commands.fail("bootstrap", problem.detail) from problem
    url = resolve_database_url(settings)

    async def work(session: AsyncSession, actor: Actor) -> Bootstrapped:
        return await bootstrap_region(
            session=session,
            actor=actor,
            crypto=Crypto.from_settings(settings),
            region_code=args.region,
            commission_name=args.commission_name,
            commission_code=args.commission_code,
            force=args.force,
        )

    done = commands.run_unit("bootstrap", url, work)
    org = done.organisation
    what = "created" if done.organisation_created else "kept"
    print(
        f"region {args.region}: {done.divisions_added} divisions added; commission {org.code} "
        f"({org.name}) {what}; commission key for API client {done.client.id}:",
        file=sys.stderr,
    )
    print(done.token, flush=True)
    print(commands.STORE_IT, file=sys.stderr)


def cmd_create_client(args: argparse.Namespace, settings: Settings) -> None:
    from service.registry.service import ROLE_ORG_KINDS, create_api_client, org_by_code

    url = resolve_database_url(settings)

    async def work(session: AsyncSession, actor: Actor) -> str:
        try:
            org = await org_by_code(session, args.org_code)
        except Problem:
            raise commands.Refused(
                f"no organisation with code {args.org_code} (codes are case-sensitive)"
            ) from None
        allowed = [role for role, kinds in ROLE_ORG_KINDS.items() if org.kind in kinds]
        if args.role not in allowed:
            article = "an" if org.kind[0] in "aeiou" else "a"
            raise commands.Refused(
                f"{args.org_code} is {article} {org.kind} organisation and cannot hold a {args.role} key "
                f"(allowed: {', '.join(allowed)})",
            )
        _, token = await create_api_client(
            session=session,
            actor=actor,
            crypto=Crypto.from_settings(settings),
            organisation_id=org.id,
            role=args.role,
            name=args.name,
        )
        return token

    token = commands.run_unit("create-client", url, work)
    print(token, flush=True)
    print(commands.STORE_IT, file=sys.stderr)


def cmd_openapi(args: argparse.Namespace, settings: Settings) -> None:
    from service.app import create_app

    app = create_app(settings, database_url="postgresql://unused/unused", run_loops=False)
    json.dump(app.openapi(), sys.stdout, indent=2, ensure_ascii=False, sort_keys=True)
    sys.stdout.write("\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slotpool", description="The referral slot pool service.")
    parser.add_argument("--debug", action="store_true", help="show the traceback when a command fails")
    parser.add_argument("--version", action="version", version=f"slotpool {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the API and the loops (the embedded default migrates first)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--demo", action="store_true", help="seed the demo region and print API keys")
    serve.add_argument("--no-loops", action="store_true", help="serve HTTP only; run `worker` elsewhere")
    serve.add_argument(
        "--sandbox",
        action="store_true",
        help="a sandbox whose clock clients move (POST /v1/sandbox/clock); refused in production",
    )
    serve.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="server processes sharing the port (default 1); one per core uses the machine",
    )
    serve.add_argument(
        "--migrate",
        action="store_true",
        help="with DATABASE_URL: run `slotpool migrate` first (needs the owner's URL)",
    )
    serve.set_defaults(func=cmd_serve)

    sub.add_parser(
        "migrate", help="apply migrations, install built-in policies, grant the runtime role"
    ).set_defaults(func=cmd_migrate)
    sub.add_parser("worker", help="run the background loops without HTTP").set_defaults(func=cmd_worker)

    boot = sub.add_parser(
        "bootstrap",
        help="set up a migrated database for one region: its divisions, its commission, the first key",
    )
    boot.add_argument(
        "--region", required=True, help="GB/T 2260 code of the commission's region, e.g. 120000"
    )
    boot.add_argument("--commission-name", required=True, help="e.g. 天津市卫生健康委员会")
    boot.add_argument(
        "--commission-code", help="the commission's organisation code (default COMMISSION-<region>)"
    )
    boot.add_argument(
        "--force", action="store_true", help="on a bootstrapped region: issue another commission key"
    )
    boot.set_defaults(func=cmd_bootstrap)

    client = sub.add_parser("create-client", help="issue an API key (shown once)")
    client.add_argument("--org-code", required=True)
    client.add_argument(
        "--role", required=True, choices=["hospital", "primary", "platform", "hotline", "commission"]
    )
    client.add_argument("--name", required=True)
    client.set_defaults(func=cmd_create_client)

    sub.add_parser("openapi", help="print the OpenAPI document").set_defaults(func=cmd_openapi)
    return parser


def package_version() -> str:
    try:
        return version("slotpool")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # Leave through SystemExit so exit handlers run: the embedded PostgreSQL is
    # stopped by one, and SIGTERM is how Docker, systemd and `timeout` stop us.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = build_parser().parse_args(argv)
    with reported(debug=args.debug):
        settings = get_settings()
        refusal = settings.development_refusal()
        if refusal is not None and args.command != "openapi":
            raise StartupError(
                refusal,
                "set SLOTPOOL_ENV=production, or SLOTPOOL_ALLOW_DEVELOPMENT_WITH_DEPLOYMENT_SETTINGS=true "
                "if this is development on purpose",
            )
        configure_logging(settings.log_level, json=settings.log_json)
        args.func(args, settings)


if __name__ == "__main__":
    main()
