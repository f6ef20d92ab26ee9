"""Imports across real processes: a server killed mid-import, then restarted; the CLI's progress
and exit status. Servers are `vectorhive serve` subprocesses on the test database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from service.db import Database
from tests.conftest import TenantKeys, bearer
from tests.fake_s5 import FakePortal, serve
from tests.s5_fixtures import build
from tests.support.imports import spool_folders
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

KEY_HEX = bytes(range(32)).hex()


@pytest.fixture(scope="module")
def portal() -> Iterator[FakePortal]:
    with serve(FakePortal()) as running:
        yield running


def import_server(tmp: Path, pg_url: str, portal_url: str) -> ServerProcess:
    """`vectorhive serve` on the shared database, with the portal under the seed's variable name."""
    env = {
        "VECTORHIVE_DATABASE__URL": pg_url,
        "VECTORHIVE_DATABASE__POOL_MIN_SIZE": "1",
        "S5_PORTAL_URL": portal_url,  # the seed's name for s5.portal_url
    }
    return ServerProcess(tmp, env=env, ready_seconds=90)


def poll(base: str, key: str, import_id: str, until: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = httpx.get(f"{base}/api/v1/imports/{import_id}", headers=bearer(key)).json()
        if status["status"] in until:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


async def test_a_server_killed_mid_import_leaves_no_import_stuck_and_nothing_written(
    tmp_path: Path,
    pg_url: str,
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
    db: Database,
) -> None:
    tenant: TenantKeys = await make_tenant()
    source = build(name=unique_id("db"), n=300, chunk_size=100, key=bytes(range(32)))
    portal.files.update(source.files)
    portal.faults[f"{source.folder}/chunk-2.json"] = ["slow:20"]  # chunks 0 and 1 get staged first
    first = import_server(tmp_path, pg_url, portal.url)
    try:
        accepted = httpx.post(
            f"{first.base}/api/v1/collections/victim/imports",
            json={
                "source": "s5",
                "manifest_path": source.manifest_path,
                "user_address": source.user_address,
                "encryption_key": KEY_HEX,
            },
            headers=bearer(tenant.admin),
        ).json()
        import_id = accepted["import_id"]
        deadline = time.monotonic() + 30
        while (status := poll(first.base, tenant.admin, import_id, {"loading"}))["chunks_done"] < 2:
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        # The decode workers (and multiprocessing's resource tracker) the server started.
        children = psutil.Process(first.process.pid).children(recursive=True)
        assert children, "the import ran no decode worker"
        first.kill()
        first.process.wait(timeout=10)
    finally:
        first.end()
    # They die with it: nothing is left behind by a SIGKILL'd server.
    _gone, alive = psutil.wait_procs(children, timeout=15)
    for orphan in alive:
        orphan.kill()
    assert not alive, [p.pid for p in alive]
    # What a SIGKILL'd server cannot remove: its folder of downloaded chunks (until the next import).
    assert spool_folders(import_id)

    second = import_server(tmp_path, pg_url, portal.url)
    try:
        status = poll(second.base, tenant.admin, import_id, {"loaded", "error", "cancelled"}, timeout=10)
        assert status["status"] == "error", status
        assert status["error"]["code"] == "interrupted"
        assert status["finished_at"] is not None
        missing = httpx.get(f"{second.base}/api/v1/collections/victim", headers=bearer(tenant.admin))
        assert missing.status_code == 404  # nothing of the import was committed
        # The same import, submitted again, goes through.
        portal.faults.pop(f"{source.folder}/chunk-2.json", None)
        again = httpx.post(
            f"{second.base}/api/v1/collections/victim/imports",
            json={
                "source": "s5",
                "manifest_path": source.manifest_path,
                "user_address": source.user_address,
                "encryption_key": KEY_HEX,
            },
            headers=bearer(tenant.admin),
        ).json()
        assert poll(second.base, tenant.admin, again["import_id"], {"loaded", "error"})["status"] == "loaded"
        assert not spool_folders(import_id)  # the next import removed the dead server's folder
        assert not spool_folders(again["import_id"])
    finally:
        second.end()
    # No import's staging table outlived its session.
    leftovers = await db.pool.fetchval(
        "SELECT count(*) FROM pg_class WHERE relname = 'vh_import' AND relpersistence = 't'"
    )
    assert leftovers == 0


async def test_cli_shows_progress_and_exits_by_outcome(
    tmp_path: Path,
    pg_url: str,
    portal: FakePortal,
    make_tenant: Callable[..., Any],
    unique_id: Callable[[str], str],
) -> None:
    tenant: TenantKeys = await make_tenant()
    source = build(name=unique_id("db"), n=300, chunk_size=100, key=bytes(range(32)))
    portal.files.update(source.files)
    server = import_server(tmp_path, pg_url, portal.url)
    try:

        def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "service.cli", "import", "s5", "--url", server.base, *args],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, **(env or {})},
            )

        common = ["--collection", "cli", "--manifest", source.manifest_path, "--user", source.user_address]
        ok = cli("--key", tenant.admin, *common, "--encryption-key", KEY_HEX)
        assert ok.returncode == 0, ok.stderr
        assert '"status": "loaded"' in ok.stdout
        assert "3/3 chunks, 300 vectors, loaded" in ok.stderr  # the progress bar's last state
        assert "loaded 300 vectors into 'cli'" in ok.stderr
        assert KEY_HEX not in ok.stderr + ok.stdout

        # The key from the environment, and the cache on a second run.
        again = cli(
            *common, env={"VECTORHIVE_API_KEY": tenant.admin, "VECTORHIVE_S5_ENCRYPTION_KEY": KEY_HEX}
        )
        assert again.returncode == 0, again.stderr
        assert "cached" in again.stderr

        wrong = cli("--key", tenant.admin, *common, "--encryption-key", "00" * 32)
        assert wrong.returncode == 1
        assert "decryption_failed" in wrong.stderr

        refused = cli("--key", tenant.admin, *common, "--encryption-key", "not-a-key")
        assert refused.returncode == 2
        assert "encryption_key" in refused.stderr and "not-a-key" not in refused.stderr

        # Both secrets from files, so that neither is in the process list; a refused request
        # prints its field-level errors, not only the summary.
        key_file, secret_file = tmp_path / "api-key", tmp_path / "s5-key"
        key_file.write_text(tenant.admin + "\n")
        secret_file.write_text(KEY_HEX + "\n")
        from_files = cli("--key-file", str(key_file), "--encryption-key-file", str(secret_file), *common)
        assert from_files.returncode == 0, from_files.stderr
        bad_user = cli(
            "--key-file",
            str(key_file),
            "--collection",
            "cli",
            "--manifest",
            source.manifest_path,
            "--user",
            "0xnothex",
        )
        assert bad_user.returncode == 2
        assert "\n  user_address: must be 0x followed by 40 hex digits" in bad_user.stderr
    finally:
        server.end()
