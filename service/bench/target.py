"""The benchmark's target: a running server (--url/--key), or a temporary server on a temporary
embedded database, with a tenant and a key of its own, removed afterwards."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


@dataclass
class Target:
    url: str
    key: str
    database_url: str | None
    cleanup: Any = None
    pid: int | None = None  # the server process, when this benchmark started it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_temporary_server(env_overrides: dict[str, str] | None = None, permission: str = "admin") -> Target:
    """A server on a temporary embedded database, with a tenant ("bench") and a key for it."""
    workdir = Path(tempfile.mkdtemp(prefix="vectorhive-bench-"))
    env = {
        **os.environ,
        "VECTORHIVE_SERVER__ACCESS_LOG": "false",
        "VECTORHIVE_SERVER__LOG_LEVEL": "warning",
        # The benchmark measures the database and the API, not the tenant's request quota (1,000
        # requests a minute by default would turn its QPS runs into 429s).
        "VECTORHIVE_RATE_LIMITING__ENABLED": "false",
        **(env_overrides or {}),
    }
    cli = [sys.executable, "-m", "service.cli"]
    # Only serve and migrate create a database; the other commands refuse a folder without one.
    subprocess.run([*cli, "migrate"], cwd=workdir, env=env, check=True, capture_output=True)
    subprocess.run(
        [*cli, "tenants", "create", "bench"], cwd=workdir, env=env, check=True, capture_output=True
    )
    key = subprocess.run(
        [*cli, "keys", "create", "--tenant", "bench", "--permission", permission],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    port = _free_port()
    server = subprocess.Popen([*cli, "serve", "--port", str(port)], cwd=workdir, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        server.kill()
        raise SystemExit("the temporary server did not become ready")
    data_dir = workdir / "data" / "postgres"

    def cleanup() -> None:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
        subprocess.run(["rm", "-rf", str(workdir)], check=False)

    # The embedded server listens on a unix socket in its data folder.
    return Target(url, key, f"postgresql://postgres@/postgres?host={data_dir}", cleanup, server.pid)
