"""`vectorhive serve`: the HTTP server under uvicorn, one process or `server.workers` of them, after
checking that its port is free."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from service.commands.common import CliError, describe_database
from service.config import Settings


def uvicorn_config(settings: Settings, app: Any, **options: Any) -> Any:
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

        return serve_workers(settings, lambda app, **options: uvicorn_config(settings, app, **options))

    from service.app import create_app

    server = uvicorn.Server(uvicorn_config(settings, create_app(settings)))
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
