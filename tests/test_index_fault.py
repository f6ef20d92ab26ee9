"""An HNSW build whose connection dies mid-build (a database restart or crash) is retried, and
ends `ready`: it does not stay `building` forever."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.collections.indexer import INDEX_LOCK_CLASS, IndexBuilder
from service.db import Database
from tests.conftest import MakeSettings, MakeTenant, bearer


async def wait_for(condition: Callable[[], Any], what: str, seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_build_cut_by_a_database_fault_is_retried(
    client: AsyncTestClient[Litestar],
    make_tenant: MakeTenant,
    db: Database,
    make_settings: MakeSettings,
) -> None:
    tenant = await make_tenant()
    headers = bearer(tenant.admin)
    assert (
        await client.post("/api/v1/collections", json={"name": "c", "dimension": 2}, headers=headers)
    ).status_code == 201
    vectors = {"vectors": [{"id": str(i), "vector": [1, i]} for i in range(50)]}
    assert (
        await client.put("/api/v1/collections/c/vectors", json=vectors, headers=headers)
    ).status_code == 200
    collection_id = await db.pool.fetchval(
        "SELECT id FROM collections WHERE tenant_id = $1 AND name = 'c'", tenant.tenant_id
    )
    builder = IndexBuilder(db, make_settings().collections)
    async with db.pool.acquire() as blocker, blocker.transaction():
        # CREATE INDEX CONCURRENTLY waits behind this lock: the build is caught mid-way.
        await blocker.execute(f"LOCK TABLE vectors_{collection_id} IN SHARE ROW EXCLUSIVE MODE")
        builder.schedule(collection_id)

        async def building_backend() -> int | None:
            pid: int | None = await db.pool.fetchval(
                """SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                   WHERE l.locktype = 'advisory' AND l.classid = $1 AND l.objid = $2 AND l.granted
                     AND a.wait_event_type = 'Lock'""",
                INDEX_LOCK_CLASS,
                collection_id,
            )
            return pid

        pid = await wait_for(building_backend, "the build to wait for the table")
        assert (
            await db.pool.fetchval("SELECT index_status FROM collections WHERE id = $1", collection_id)
            == "building"
        )
        await db.pool.execute("SELECT pg_terminate_backend($1)", pid)  # what a crash does to it
        await asyncio.sleep(0.5)
    try:

        async def ready() -> bool:
            status = await db.pool.fetchval(
                "SELECT index_status FROM collections WHERE id = $1", collection_id
            )
            return bool(status == "ready")

        await wait_for(ready, "the build to be retried and finish")
    finally:
        await builder.close()
