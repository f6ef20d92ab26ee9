"""Graceful shutdown while the database is unreachable: a SIGTERM'd `vectorhive serve` ends
promptly, its import decode workers end with it, and nothing in its log is a traceback or a 500.

The server talks to the session's PostgreSQL through a proxy on 127.0.0.1 (tests/db_proxy.py), so
the database can become unreachable the two ways it does in production: down (connections cut and
refused) and a network partition (connections open, nothing answers)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from service.db import Database
from service.imports.lease import LEASE_CLASS
from tests.conftest import MakeTenant, TenantKeys, UniqueId, bearer
from tests.db_proxy import DatabaseProxy, database_proxy
from tests.fake_s5 import FakePortal, serve
from tests.s5_fixtures import build
from tests.support.server import ServerProcess
from tests.test_import_process import KEY_HEX

pytestmark = pytest.mark.slow

# What the shutdown may take with the database gone: every step that needs the database is
# bounded (service/app.py SHUTDOWN_DATABASE_SECONDS and the import runner's own bounds). A
# Kubernetes pod gets 30 s (terminationGracePeriodSeconds) before SIGKILL; the figure measured
# on an idle machine is printed by the test.
SHUTDOWN_LIMIT_SECONDS = 25


@pytest.fixture(scope="module")
def portal() -> Iterator[FakePortal]:
    with serve(FakePortal()) as running:
        yield running


@pytest.fixture
def proxy(pg_url: str) -> Iterator[DatabaseProxy]:
    with database_proxy(pg_url) as running:
        yield running


def log_entries(path: Path) -> list[dict[str, Any]]:
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            entries.append({"raw": line})
    return entries


@pytest.mark.parametrize("outage", ["refused", "dropped"])
async def test_sigterm_with_the_database_unreachable_ends_promptly_and_leaves_no_worker(
    outage: str,
    tmp_path: Path,
    proxy: DatabaseProxy,
    portal: FakePortal,
    make_tenant: MakeTenant,
    unique_id: UniqueId,
    db: Database,
) -> None:
    tenant: TenantKeys = await make_tenant("read_only")
    source = build(name=unique_id("db"), n=300, chunk_size=100, key=bytes(range(32)))
    portal.files.update(source.files)
    portal.faults[f"{source.folder}/chunk-2.json"] = ["slow:60"]  # the import is mid-way at the outage
    server = ServerProcess(
        tmp_path,
        env={
            "VECTORHIVE_DATABASE__URL": proxy.url,
            "VECTORHIVE_DATABASE__POOL_MIN_SIZE": "1",
            "S5_PORTAL_URL": portal.url,  # the seed's name for s5.portal_url
        },
    )
    try:
        async with httpx.AsyncClient(base_url=server.base, headers=bearer(tenant.admin), timeout=30) as http:
            accepted = await http.post(
                "/api/v1/collections/outage/imports",
                json={
                    "source": "s5",
                    "manifest_path": source.manifest_path,
                    "user_address": source.user_address,
                    "encryption_key": KEY_HEX,
                },
            )
            assert accepted.status_code == 202, accepted.text
            import_id = accepted.json()["import_id"]
            deadline = time.monotonic() + 60
            while (status := (await http.get(f"/api/v1/imports/{import_id}")).json())["chunks_done"] < 2:
                assert status["status"] in ("pending", "loading") and time.monotonic() < deadline, status
                await asyncio.sleep(0.1)
            workers = psutil.Process(server.process.pid).children(recursive=True)
            assert workers, "the import started no decode worker"
            # Work that shutdown wants to write: usage counts and a key's last use, not yet flushed.
            assert (await http.get("/api/v1/collections")).status_code == 200

            if outage == "refused":
                proxy.refuse()
                # A key the server has not verified yet needs the database: 503, not 500.
                during = await http.get("/api/v1/me", headers=bearer(tenant.key("read_only")))
                assert during.status_code == 503, during.text
                assert during.json()["code"] == "database_unavailable"
                assert int(during.headers["retry-after"]) >= 1
            else:
                proxy.drop()

        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=90)
        took = time.monotonic() - started
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=30)
        proxy.restore()
    print(f"shutdown with the database {outage}: {took:.1f} s")  # a measured figure, shown with -s

    log = server.log.read_text()
    assert code in (0, -signal.SIGTERM, 128 + signal.SIGTERM), log[-3000:]
    assert took < SHUTDOWN_LIMIT_SECONDS, f"shutdown took {took:.1f} s:\n{log[-3000:]}"
    assert "Application shutdown complete" in log, log[-3000:]
    # An unreachable database at shutdown is a condition to report, not a crash to dump.
    assert "Traceback" not in log, log[-5000:]
    entries = log_entries(server.log)
    assert not [e for e in entries if e.get("level") in ("error", "critical")], log[-5000:]
    assert not [
        e for e in entries if isinstance(e.get("status"), int) and e["status"] >= 500 and e["status"] != 503
    ]
    # It says so, and what it could not write (usage counts are lost; the import is swept later).
    said = [e["msg"] for e in entries if str(e.get("msg", "")).startswith("database unreachable at shutdown")]
    assert any("usage counts" in msg for msg in said), said

    # The decode workers (and multiprocessing's resource tracker) ended with the server.
    _gone, alive = psutil.wait_procs(workers, timeout=10)
    for orphan in alive:
        orphan.kill()
    assert not alive, [(p.pid, p.name()) for p in alive]

    # Its import lease died with it once the database is reachable again (the proxy closes a
    # connection upstream when the service's side is gone), so any replica's sweep ends the import
    # as interrupted instead of leaving it `loading` forever.
    runner = await db.pool.fetchval("SELECT runner FROM imports WHERE id = $1::uuid", import_id)
    deadline = time.monotonic() + 30
    while await db.pool.fetchval(
        """SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
           AND classid = $1::int8::oid AND objid = $2::int8::oid""",
        LEASE_CLASS,
        runner,
    ):
        assert time.monotonic() < deadline, "the dead server's import lease is still held"
        await asyncio.sleep(0.2)
