"""The ``slotpool`` command: serve, migrate, worker, bootstrap, create-client, openapi."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

from service.cli_failures import StartupError, ensure_port_free, reported
from service.clock import Clock
from service.config import Settings, get_settings
from service.context import Actor
from service.crypto import Crypto
from service.db import Database
from service.logging import configure_logging
from service.metrics import serve_metrics
from service.registry.commands import cmd_bootstrap, cmd_create_client

_embedded_server: Any = None  # kept referenced so the server lives as long as the process


def resolve_database_url(settings: Settings) -> str:
    """DATABASE_URL if set; otherwise start the embedded PostgreSQL and use it."""
    global _embedded_server
    if settings.database_url:
        return settings.database_url
    from service import embedded

    _embedded_server = embedded.start(settings.data_dir)
    url = embedded.server_url(_embedded_server)
    asyncio.run(embedded.ensure_database(url))
    print(f"embedded PostgreSQL: data in {settings.data_dir / 'pgdata'}", file=sys.stderr)
    return url


def crypto_from(settings: Settings) -> Crypto:
    return Crypto(
        data_key=settings.key_bytes("data_key"),
        index_key=settings.key_bytes("index_key"),
        api_key_pepper=settings.key_bytes("api_key_pepper"),
    )


async def migrate_and_install_presets(url: str) -> None:
    """Bring the schema to head and make sure the built-in policies exist."""
    from service.migrations import upgrade
    from service.policy.service import install_presets

    await upgrade(url)
    db = Database(url, pool_size=1)
    try:
        now = Clock().now()
        await db.run(lambda s: install_presets(session=s, actor=Actor.system("cli", now=now)))
    finally:
        await db.dispose()


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> None:
    url = resolve_database_url(settings)
    asyncio.run(migrate_and_install_presets(url))
    print("migrations applied; built-in policies present")


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    from service.app import create_app

    ensure_port_free(args.host, args.port, what="--port")
    start_metrics(settings)
    url = resolve_database_url(settings)
    asyncio.run(migrate_and_install_presets(url))
    if args.demo:
        from service.demo import print_demo_keys, seed_demo

        keys = asyncio.run(seed_demo(url, settings))
        print_demo_keys(keys, host=args.host, port=args.port)
    app = create_app(settings, database_url=url, run_loops=not args.no_loops)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def cmd_worker(args: argparse.Namespace, settings: Settings) -> None:
    from service.loops import background_loops

    start_metrics(settings)
    url = resolve_database_url(settings)

    async def main() -> None:
        db = Database(url, pool_size=settings.db_pool_size)
        stop = asyncio.Event()
        try:
            await asyncio.gather(
                *background_loops(
                    db=db,
                    clock=Clock(),
                    crypto=crypto_from(settings),
                    settings=settings,
                    database_url=url,
                    stop=stop,
                )
            )
        finally:
            await db.dispose()

    asyncio.run(main())


def start_metrics(settings: Settings) -> None:
    """Prometheus on SLOTPOOL_METRICS_PORT (unset: not served); never on the API port."""
    if settings.metrics_port is None:
        return
    ensure_port_free(settings.metrics_host, settings.metrics_port, what="SLOTPOOL_METRICS_PORT")
    serve_metrics(settings.metrics_port, settings.metrics_host)


def cmd_openapi(args: argparse.Namespace, settings: Settings) -> None:
    from service.app import create_app

    app = create_app(settings, database_url="postgresql://unused/unused", run_loops=False)
    json.dump(app.openapi(), sys.stdout, indent=2, ensure_ascii=False, sort_keys=True)
    sys.stdout.write("\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slotpool", description="The referral slot pool service.")
    parser.add_argument("--debug", action="store_true", help="show the traceback when a command fails")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="apply migrations and serve the API (and the release loop)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--demo", action="store_true", help="seed the demo region and print API keys")
    serve.add_argument("--no-loops", action="store_true", help="serve HTTP only; run `worker` elsewhere")
    serve.set_defaults(func=cmd_serve)

    sub.add_parser("migrate", help="apply migrations and install built-in policies").set_defaults(
        func=cmd_migrate
    )
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
