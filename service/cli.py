"""vectorhive serve | migrate | openapi | bench | import s5 ... | tenants ... | keys ...

Every command reads ./config.yml (or --config PATH) plus VECTORHIVE_* overrides. Commands that
touch data work whether or not the server runs: on the embedded database they attach to the
running instance or start it for the duration of the command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from service import __version__
from service.config import ConfigError, Settings, load_settings
from service.logs import configure_logging

# The commands are imported when one runs, not with this module: the import decode workers are
# spawned processes, and spawning imports the parent's main module (this one, under `vectorhive`
# or `python -m service.cli`) into each of them, where the web stack would only take memory.


def _command(module: str, name: str) -> Callable[[Settings, argparse.Namespace], int]:
    def run(settings: Settings, args: argparse.Namespace) -> int:
        handler: Callable[[Settings, argparse.Namespace], int] = getattr(
            importlib.import_module(f"service.commands.{module}"), name
        )
        return handler(settings, args)

    return run


cmd_serve = _command("serve", "cmd_serve")
cmd_migrate = _command("admin", "cmd_migrate")
cmd_tenants = _command("admin", "cmd_tenants")
cmd_keys = _command("admin", "cmd_keys")
cmd_bench = _command("tools", "cmd_bench")
cmd_models_prepare = _command("tools", "cmd_models_prepare")
cmd_openapi = _command("tools", "cmd_openapi")


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


def main(argv: list[str] | None = None) -> int:
    from service.commands.common import CliError, describe_database
    from service.errors import ServiceError

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
