"""`vectorhive serve` in a subprocess, for tests that need real server processes: replicas on one
database, a SIGKILL mid-work, a clean SIGTERM/SIGINT shutdown. The one copy of "start it, wait
until it is ready, stop it"; the CLI's other commands run through `vectorhive_cli`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

READY_SECONDS = 90.0

# Every server started, so that none outlives the test session (a test that fails before its own
# clean-up would otherwise leave its server running): see end_all, called by tests/conftest.py.
_STARTED: list[ServerProcess] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vectorhive_cli(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """`vectorhive <args>` to its end, output captured; `env` is added to this process's environment.
    With check, a non-zero exit status fails the test (with the command's stderr)."""
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def replica_env(pg_url: str, **env: str) -> dict[str, str]:
    """The environment of a server on the test database (one of several replicas): no access log
    (replicas' logs are read for what matters), plus `env`."""
    return {"VECTORHIVE_DATABASE__URL": pg_url, "VECTORHIVE_SERVER__ACCESS_LOG": "false", **env}


class ServerProcess:
    """`vectorhive serve --port <port>` in `cwd`, its output in `cwd/server-<port>.log`; ready
    (GET /readyz answers 200) when the constructor returns. `env` is added to this process's
    environment."""

    def __init__(
        self,
        cwd: Path,
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        ready_seconds: float = READY_SECONDS,
    ) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"server-{self.port}.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)],
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        _STARTED.append(self)
        deadline = time.monotonic() + ready_seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.base + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.process.kill()
        self.process.wait(timeout=30)
        raise AssertionError("server did not become ready:\n" + self.log.read_text())

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Signal the server and check that it shut down cleanly.

        uvicorn re-raises the signal once its graceful shutdown is done, so the exit status says
        "ended by SIGTERM" (-15) or, for SIGINT, our KeyboardInterrupt exit (130).
        """
        self.process.send_signal(sig)
        code = self.process.wait(timeout=60)
        log = self.log.read_text()
        assert code in (0, -sig, 128 + sig), log
        assert "Application shutdown complete" in log, log
        assert "Traceback" not in log, log

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush (a crash)."""
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=30) == -signal.SIGKILL

    def end(self) -> None:
        """Whatever state it is in, make sure it is gone (SIGTERM, then SIGKILL); checks nothing:
        for clean-up after a test that may have failed half-way."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def end_all() -> None:
    """End every server a test started and left running."""
    while _STARTED:
        _STARTED.pop().end()
