"""vectorhive serve | migrate | openapi | bench | import s5 ... | tenants ... | keys ...

Every command reads ./config.yml (or --config PATH) plus VECTORHIVE_* overrides. Commands that
touch data work whether or not the server runs: on the embedded database they attach to the
running instance or start it for the duration of the command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from service import __version__
from service.config import ConfigError, Settings, load_settings
from service.errors import ServiceError
from service.logs import configure_logging

T = TypeVar("T")

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class CliError(Exception):
    """A message for the user; exit status 1."""


def parse_expiry(text: str, *, now: datetime | None = None) -> datetime:
    """'30d', '12h', '90m' from now, or an ISO 8601 time (UTC when it names no zone)."""
    now = now or datetime.now(UTC)
    match = _DURATION.fullmatch(text.strip())
    if match:
        return now + timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CliError(
            f"--expires: '{text}' is neither a duration like 30d/12h/90m nor an ISO 8601 time"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _json_line(value: Any) -> str:
    return msgspec.json.encode(value).decode()


_POINT_ELSEWHERE = (
    "run the command from the server's folder, or point at the right database with --config PATH, "
    "--data-dir DIR or VECTORHIVE_DATABASE__URL=postgresql://...; `vectorhive migrate` (or `serve`) "
    "creates a new one"
)


def describe_database(settings: Settings) -> str:
    """Where the data lives, for messages: the embedded folder, or the URL without its password."""
    url = settings.database.url
    if url is None:
        return f"the embedded PostgreSQL in {settings.database.data_dir}"
    return "PostgreSQL at " + re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


@asynccontextmanager
async def _database(settings: Settings, *, create: bool) -> AsyncIterator[Any]:
    from service.db import Database

    embedded = settings.database.url is None
    if not create and embedded and not (Path(settings.database.data_dir) / "PG_VERSION").exists():
        # Commands other than serve and migrate never initialise a database: an empty one made in
        # the wrong folder would answer "no tenants" and hide the real one.
        raise CliError(
            f"there is no database at {settings.database.data_dir} (database.data_dir); {_POINT_ELSEWHERE}"
        )
    # A CLI command needs a connection or two, not the server's pool.
    db_settings = msgspec.structs.replace(
        settings.database,
        pool_min_size=1,
        pool_max_size=2,
        migrate_on_startup=settings.database.migrate_on_startup if create else False,
    )
    db = Database(db_settings)
    await db.start()
    try:
        if not create and not await db.pool.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL"):
            raise CliError(f"{describe_database(settings)} has no vectorhive tables; {_POINT_ELSEWHERE}")
        yield db
    finally:
        await db.stop()


def _run(settings: Settings, action: Callable[[Any], Awaitable[T]], *, create: bool = False) -> T:
    async def main() -> T:
        async with _database(settings, create=create) as db:
            return await action(db)

    return asyncio.run(main())


# --- commands -----------------------------------------------------------------------------------


def _uvicorn_config(settings: Settings, app: Any, **options: Any) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
        # uvloop and httptools: about twice the plain asyncio loop and h11 per request.
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=30,
        # uvicorn would take X-Forwarded-For from 127.0.0.1 by default; the app decides whom
        # to believe (server.trusted_proxies).
        proxy_headers=False,
        **options,
    )


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    if args.host is not None:
        settings.server.host = args.host
    if args.port is not None:
        settings.server.port = args.port
    _check_port_free(settings.server.host, settings.server.port)
    logging.getLogger("vectorhive.cli").info(
        f"serving data from {describe_database(settings)}",
        extra={"database": describe_database(settings)},
    )
    if settings.server.workers > 1:
        from service.workers import serve_workers

        return serve_workers(settings, lambda app, **options: _uvicorn_config(settings, app, **options))

    from service.app import create_app

    server = uvicorn.Server(_uvicorn_config(settings, create_app(settings)))
    server.run()
    return 0 if server.started else 1


def _port_owner(port: int) -> str:
    """Which local process listens on the port, when this user may see it (psutil), else ''."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                process = psutil.Process(conn.pid)
                return f" by process {conn.pid} ({' '.join(process.cmdline())[:120]})"
    except (psutil.Error, OSError):
        pass
    return ""


def _check_port_free(host: str, port: int) -> None:
    """Say that the port is taken, and by whom if we can tell, instead of uvicorn's bare [Errno 98]."""
    import errno
    import socket

    import httpx

    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            return
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return  # uvicorn reports other bind failures itself
    who = ""
    address = f"[{host}]" if ":" in host else ("127.0.0.1" if host in ("0.0.0.0", "") else host)
    try:
        answer = httpx.get(f"http://{address}:{port}/healthz", timeout=2).json()
        if isinstance(answer, dict) and answer.get("status") == "ok" and "version" in answer:
            who = f"; another vectorhive (version {answer['version']}) answers there"
    except (httpx.HTTPError, ValueError):
        pass
    raise CliError(
        f"port {port} on {host} is already in use{_port_owner(port)}{who}; stop it or choose another "
        "with --port or server.port"
    )


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    async def action(db: Any) -> str:
        revision: str = await db.pool.fetchval("SELECT version_num FROM alembic_version")
        return revision

    settings.database.migrate_on_startup = True
    revision = _run(settings, action, create=True)
    print(f"database at revision {revision}: {describe_database(settings)}", file=sys.stderr)
    return 0


def cmd_openapi(settings: Settings, args: argparse.Namespace) -> int:
    from service.app import create_app

    sys.stdout.write(openapi_json(create_app(settings)))
    return 0


def openapi_json(app: Any) -> str:
    return json.dumps(app.openapi_schema.to_schema(), indent=2, sort_keys=True) + "\n"


def cmd_tenants(settings: Settings, args: argparse.Namespace) -> int:
    from service.tenants.models import TenantStatus
    from service.tenants.service import TenantService

    async def action(db: Any) -> int:
        tenants = TenantService(db)
        if args.tenants_command == "create":
            print(_json_line(await tenants.create(args.id, args.name)))
        elif args.tenants_command == "list":
            cursor = None
            while True:
                page = await tenants.list_page(cursor=cursor, limit=500)
                for tenant in page.items:
                    print(_json_line(tenant))
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            if cursor is None and not page.items:
                print(f"no tenants in {describe_database(settings)}", file=sys.stderr)
        elif args.tenants_command in ("suspend", "resume"):
            status = TenantStatus.SUSPENDED if args.tenants_command == "suspend" else TenantStatus.ACTIVE
            print(_json_line(await tenants.set_status(args.id, status)))
        return 0

    return _run(settings, action)


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    from service.auth.models import CreateKeyRequest
    from service.auth.principal import Permission
    from service.auth.service import KeyService

    if args.keys_command == "create":
        if args.operator == (args.tenant is not None):
            raise CliError("keys create: give either --tenant ID (with --permission) or --operator")
        if args.tenant is not None and args.permission is None:
            raise CliError("keys create --tenant: --permission admin|read_write|read_only|mcp is required")
        if args.operator and (args.permission or args.collections):
            raise CliError("keys create --operator: operator keys take no --permission or --collections")
        collections = (
            [c.strip() for c in args.collections.split(",") if c.strip()] if args.collections else None
        )
        try:
            request = msgspec.convert(
                {
                    "permission": args.permission or Permission.ADMIN.value,
                    "name": args.name or ("operator key" if args.operator else f"{args.permission} key"),
                    "collections": collections,
                    "expires_at": parse_expiry(args.expires) if args.expires else None,
                },
                CreateKeyRequest,
            )
        except msgspec.ValidationError as exc:
            raise CliError(f"keys create: {exc}") from None
    if args.keys_command == "list" and args.operator == (args.tenant is not None):
        raise CliError("keys list: give either --tenant ID or --operator")

    async def action(db: Any) -> int:
        keys = KeyService(db)
        if args.keys_command == "create":
            created = await keys.create(args.tenant, request)
            owner = f"tenant '{created.tenant_id}'" if created.tenant_id else "operators"
            print(
                f"created key {created.key_id} for {owner}"
                + (f" with permission {created.permission}" if created.permission else "")
                + "; it is shown once, below",
                file=sys.stderr,
            )
            print(created.key)
        elif args.keys_command == "list":
            cursor = None
            while True:
                page = await keys.list_page(args.tenant, cursor=cursor, limit=500)
                for key in page.items:
                    print(_json_line(key))
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
        elif args.keys_command == "revoke":
            revoked = await keys.revoke(None, args.key_id, any_tenant=True)
            print(f"revoked key {revoked.key_id} at {revoked.revoked_at}", file=sys.stderr)
        return 0

    return _run(settings, action)


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from service import bench

    return bench.main(args)


# --- argument parsing ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # --config is accepted before or after the command name.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="configuration file (default ./config.yml)",
    )
    common.add_argument(
        "--data-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="the embedded database's folder (overrides database.data_dir)",
    )
    parser = argparse.ArgumentParser(
        prog="vectorhive",
        description=__doc__,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vectorhive {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the HTTP server")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.set_defaults(handler=cmd_serve)

    commands.add_parser("migrate", parents=[common], help="apply database migrations").set_defaults(
        handler=cmd_migrate
    )
    commands.add_parser("openapi", parents=[common], help="print the OpenAPI document").set_defaults(
        handler=cmd_openapi
    )

    bench = commands.add_parser(
        "bench",
        parents=[common],
        help="load vectors through the API and measure search (see docs/benchmarks.md)",
    )
    bench.add_argument(
        "--url", help="a running server (default: start a temporary one on a temporary database)"
    )
    bench.add_argument("--key", help="an ADMIN key of the tenant to benchmark in (with --url)")
    bench.add_argument(
        "--database-url", help="the server's database, for the raw-SQL comparison (with --url)"
    )
    bench.add_argument("--vectors", type=int, default=100_000)
    bench.add_argument("--dim", type=int, default=384)
    bench.add_argument("--data", default="clustered", help="clustered (default), uniform, or FILE.npy")
    bench.add_argument("--queries", type=int, default=200)
    bench.add_argument("--ef-search", type=int, default=100, help="hnsw.ef_search for the raw-SQL comparison")
    bench.add_argument("--keep", action="store_true", help="keep the benchmark collection afterwards")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument(
        "--encoding",
        choices=["json", "base64", "both"],
        default="both",
        help="upsert vectors as JSON numbers, as base64 float32 (vector_b64), or both (default: the "
        "same vectors as base64 into a scratch collection first, then the main load as JSON)",
    )
    bench.add_argument(
        "--workers", type=int, default=1, help="server.workers of the temporary server (without --url)"
    )
    bench.set_defaults(handler=cmd_bench)

    models = commands.add_parser(
        "models", parents=[common], help="prepare the configured models (e.g. in an init container)"
    )
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    model_commands.add_parser(
        "prepare", parents=[common], help="download and convert the default model into embeddings.cache_dir"
    ).set_defaults(handler=cmd_models_prepare)

    from service.imports.cli import add_parser as add_import_parser

    add_import_parser(commands, common)

    tenants = commands.add_parser("tenants", parents=[common], help="manage tenants")
    tenants.set_defaults(handler=cmd_tenants)
    tenant_commands = tenants.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    create = tenant_commands.add_parser("create", parents=[common], help="create a tenant")
    create.add_argument("id", help="tenant id: [a-z0-9][a-z0-9-]{0,62}")
    create.add_argument("--name", help="display name (default: the id)")
    tenant_commands.add_parser("list", parents=[common], help="list tenants as JSON lines")
    for action in ("suspend", "resume"):
        sub = tenant_commands.add_parser(action, parents=[common], help=f"{action} a tenant")
        sub.add_argument("id")

    keys = commands.add_parser("keys", parents=[common], help="manage API keys")
    keys.set_defaults(handler=cmd_keys)
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    kc = key_commands.add_parser("create", parents=[common], help="create a key; prints it once on stdout")
    kc.add_argument("--tenant", metavar="ID")
    kc.add_argument("--operator", action="store_true", help="an operator key (admin and cluster endpoints)")
    kc.add_argument("--permission", choices=["admin", "read_write", "read_only", "mcp"])
    kc.add_argument("--collections", metavar="A,B", help="limit the key to these collections")
    kc.add_argument("--expires", metavar="WHEN", help="30d, 12h, 90m or an ISO 8601 time")
    kc.add_argument("--name")
    kl = key_commands.add_parser("list", parents=[common], help="list keys as JSON lines")
    kl.add_argument("--tenant", metavar="ID")
    kl.add_argument("--operator", action="store_true")
    kr = key_commands.add_parser("revoke", parents=[common], help="revoke a key at once")
    kr.add_argument("key_id")
    return parser


def cmd_models_prepare(settings: Settings, args: argparse.Namespace) -> int:
    """Prepare every local model (embedding and chat) whose path is "default"; print each GGUF path."""
    from service.inference.base import local_model_path
    from service.inference.minilm import PreparationError
    from service.inference.minilm import prepare_default as prepare_embedding
    from service.inference.smollm2 import prepare_default as prepare_chat

    sections: list[tuple[str, str, Mapping[str, Any], str, Callable[[Path], Path]]] = [
        ("model", "embeddings", settings.embeddings.models, settings.embeddings.cache_dir, prepare_embedding),
        ("chat model", "generation", settings.generation.models, settings.generation.cache_dir, prepare_chat),
    ]
    for label, section, models, cache_dir, prepare in sections:
        for name, model in models.items():
            if model.url is not None:
                continue
            try:
                path = local_model_path(model.path, cache_dir, prepare)
            except PreparationError as exc:
                raise CliError(f"{label} {name}: {exc}") from exc
            except FileNotFoundError:
                raise CliError(
                    f"{label} {name}: no such file {model.path} ({section}.models.{name}.path)"
                ) from None
            print(f"{name}\t{path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(getattr(args, "config", None))
    except ConfigError as exc:
        print(f"vectorhive: configuration error: {exc}", file=sys.stderr)
        return 2
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None:
        if settings.database.url is not None:
            print(
                "vectorhive: --data-dir is for the embedded database, but database.url is set",
                file=sys.stderr,
            )
            return 2
        settings.database.data_dir = str(Path(data_dir).expanduser().resolve())
    configure_logging(settings.server.log_level if args.command == "serve" else "warning")
    try:
        code: int = args.handler(settings, args)
    except CliError as exc:
        print(f"vectorhive: {exc}", file=sys.stderr)
        return 1
    except ServiceError as exc:
        where = f" (in {describe_database(settings)})" if args.command in ("tenants", "keys") else ""
        print(f"vectorhive: {exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
