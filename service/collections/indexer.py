"""Background HNSW index builds.

A collection is created without an HNSW index: pgvector inserts into the graph one vector at a
time, which makes bulk loads slow, and an exact scan of a small collection is fast anyway. Once
it holds collections.index_threshold vectors and its writes have paused for
index_build_quiet_seconds (at most index_build_max_delay_seconds after it became eligible), the
index is built with CREATE INDEX CONCURRENTLY: writes and searches go on, searches stay exact
until the index is valid. Waiting for the pause means a bulk load is not slowed down by a graph
that is built half-way through it.

The state lives in the collection's row (none -> building -> ready | failed). A build holds a
PostgreSQL advisory lock on (INDEX_LOCK_CLASS, collection id), so one replica builds at a time,
and a replica that starts up rebuilds whatever was left 'building' with no lock holder (a crash
leaves an invalid index, which is dropped first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from service.collections import store
from service.collections.models import IndexStatus
from service.config import CollectionsSettings
from service.db import Database
from service.db.connections import service_connection
from service.errors import is_database_outage
from service.metrics import INDEX_BUILD_SECONDS, INDEX_BUILDS

log = logging.getLogger("vectorhive.indexer")

# asyncpg reads timeout=None as "the pool's command_timeout" (60 s by default), which a build of a
# few hundred thousand vectors exceeds; a build gets hours instead.
BUILD_TIMEOUT_SECONDS = 6 * 3600.0
INDEX_LOCK_CLASS = 0x7668  # first key of the two-key advisory lock; the second is the collection id


def embedded_maintenance_workers() -> int:
    """Parallel workers per index build on the embedded database, which shares this machine's cores."""
    return max(2, (os.cpu_count() or 1) - 1)


class IndexBuilder:
    def __init__(
        self, db: Database, settings: CollectionsSettings, *, parallel_workers: int | None = None
    ) -> None:
        self.db = db
        self.settings = settings
        self.parallel_workers = parallel_workers
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._last_write: dict[int, float] = {}
        self._slots = asyncio.Semaphore(settings.max_concurrent_index_builds)

    def consider(self, row: store.CollectionRow, *, wait_for_quiet: bool = True) -> None:
        """Called after writes: a build once the collection is large enough and its writes pause
        (wait_for_quiet=False: at once, for a write that is known to be the whole load)."""
        if row.index_status == IndexStatus.NONE and row.vector_count >= self.settings.index_threshold:
            self._last_write[row.id] = time.monotonic()
            self.schedule(row.id, wait_for_quiet=wait_for_quiet)

    def schedule(self, collection_id: int, *, wait_for_quiet: bool = False) -> None:
        task = self._tasks.get(collection_id)
        if task is not None and not task.done():
            return
        task = asyncio.create_task(
            self._build(collection_id, wait_for_quiet), name=f"hnsw-build-{collection_id}"
        )
        self._tasks[collection_id] = task
        task.add_done_callback(
            lambda t: self._tasks.pop(collection_id, None) if self._tasks.get(collection_id) is t else None
        )

    async def recover(self) -> None:
        """At startup: builds left unfinished by a crash, and collections that crossed the threshold."""
        records = await self.db.pool.fetch(
            """SELECT id FROM collections
               WHERE index_status IN ('building', 'failed')
                  OR (index_status = 'none' AND vector_count >= $1)""",
            self.settings.index_threshold,
        )
        for record in records:
            self.schedule(record["id"])

    async def cancel(self, collection_id: int) -> None:
        """Stop a build of this collection, here or in another replica (before dropping it)."""
        task = self._tasks.get(collection_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # its own failures are not the caller's
        await self.db.pool.execute(
            """SELECT pg_cancel_backend(pid) FROM pg_locks
               WHERE locktype = 'advisory' AND classid = $1 AND objid = $2 AND objsubid = 2 AND granted
                 AND pid <> pg_backend_pid()""",
            INDEX_LOCK_CLASS,
            collection_id,
        )

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def _quiet(self, collection_id: int) -> None:
        eligible = time.monotonic()
        deadline = eligible + self.settings.index_build_max_delay_seconds
        while True:
            last = self._last_write.get(collection_id, eligible)
            wake = min(last + self.settings.index_build_quiet_seconds, deadline)
            now = time.monotonic()
            if now >= wake:
                return
            await asyncio.sleep(wake - now)

    async def _build(self, collection_id: int, wait_for_quiet: bool) -> None:
        try:
            if wait_for_quiet:
                await self._quiet(collection_id)
        finally:
            self._last_write.pop(collection_id, None)
        delay = 1.0
        while True:
            try:
                await self._build_once(collection_id)
                return
            except Exception as exc:
                if not is_database_outage(exc):
                    log.error("HNSW index build failed", extra={"collection_id": collection_id}, exc_info=exc)
                    return
                # A database restart or crash mid-build: the row still says 'building'; try again
                # once the database answers (a restart of this process would also pick it up).
                log.warning(
                    "HNSW index build interrupted by a database fault; retrying",
                    extra={"collection_id": collection_id, "retry_in": delay, "error": repr(exc)},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _build_once(self, collection_id: int) -> None:
        async with self._slots, self.db.pool.acquire() as conn:
            if not await conn.fetchval(
                "SELECT pg_try_advisory_lock($1, $2::int)", INDEX_LOCK_CLASS, collection_id
            ):
                return  # another replica is building it
            try:
                await self._build_locked(conn, collection_id)
            finally:
                with contextlib.suppress(Exception):
                    await conn.execute(
                        "SELECT pg_advisory_unlock($1, $2::int)", INDEX_LOCK_CLASS, collection_id
                    )

    def _maintenance_workers(self) -> int | None:
        """PostgreSQL parallel workers per build (index_builds.parallel_workers); None: leave the
        server's own setting. The embedded database shares this machine's cores: one worker per
        core besides the leader's, and never fewer than PostgreSQL's default of 2 (on 2 shared
        cores a 100K x 384 build took 128 s with 2 workers, 184 s with 1 at a similar load: three
        builders get a larger share of contended cores; docs/benchmarks.md)."""
        if self.parallel_workers is not None:
            return self.parallel_workers
        if self.db.embedded is not None:
            return embedded_maintenance_workers()
        return None

    async def _build_locked(self, conn: Any, collection_id: int) -> None:
        row = await store.get_by_id(service_connection(conn), collection_id)
        if row is None or row.index_status == IndexStatus.READY:
            return  # deleted, or already built
        await conn.execute(
            """UPDATE collections SET index_status = 'building', index_started_at = now(),
                   index_finished_at = NULL, index_error = NULL WHERE id = $1""",
            collection_id,
        )
        log.info("building HNSW index", extra={"collection_id": collection_id, "vectors": row.vector_count})
        started = time.perf_counter()
        try:
            await conn.execute(
                "SELECT set_config('maintenance_work_mem', $1, false)", self.settings.index_build_memory
            )
            workers = self._maintenance_workers()
            if workers is not None:
                await conn.execute(
                    "SELECT set_config('max_parallel_maintenance_workers', $1, false)", str(workers)
                )
            # An index left invalid by an interrupted build would otherwise block the name.
            await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {row.hnsw_index}")
            await conn.execute(store.hnsw_index_sql(row), timeout=BUILD_TIMEOUT_SECONDS)
            # Fresh statistics before the index counts as ready: without them the planner
            # misjudges the table's size and the filters' selectivity and may prefer a full scan.
            await conn.execute(f"ANALYZE {row.table}", timeout=BUILD_TIMEOUT_SECONDS)
        except asyncio.CancelledError:
            INDEX_BUILDS.labels("cancelled").inc()
            # Shutdown or delete: back to 'none', so that the next write (on any replica) or a
            # restart schedules it again. The build's own connection may be unusable now.
            with contextlib.suppress(Exception):
                await self.db.pool.execute(
                    "UPDATE collections SET index_status = 'none', index_started_at = NULL WHERE id = $1",
                    collection_id,
                )
            raise
        except Exception as exc:
            if is_database_outage(exc):
                INDEX_BUILDS.labels("interrupted").inc()
                raise  # the connection is gone: _build retries the whole build
            INDEX_BUILDS.labels("failed").inc()
            log.error("HNSW index build failed", extra={"collection_id": collection_id}, exc_info=exc)
            # A fresh connection: the build's own may be unusable after what failed on it.
            await self.db.pool.execute(
                """UPDATE collections SET index_status = 'failed', index_finished_at = now(), index_error = $2
                   WHERE id = $1""",
                collection_id,
                f"{type(exc).__name__}: {exc}"[:500],
            )
            return
        elapsed = time.perf_counter() - started
        INDEX_BUILD_SECONDS.observe(elapsed)
        INDEX_BUILDS.labels("ready").inc()
        await conn.execute(
            "UPDATE collections SET index_status = 'ready', index_finished_at = now() WHERE id = $1",
            collection_id,
        )
        log.info("HNSW index ready", extra={"collection_id": collection_id, "seconds": round(elapsed, 2)})
