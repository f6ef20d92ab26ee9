"""Runs imports in the background: download, decode, stage, and one merge transaction.

All or nothing. Chunks are staged with binary COPY into a temporary table of the import's own
connection, and go into the collection in one transaction at the end, together with the import's
`loaded` status. A failure, a cancellation or a crash before that commit leaves the collection as
it was: the temporary table vanishes with its session. A cancellation that arrives after the
commit is refused (409), so what DELETE answers is what happened.

Durable. The import is a row from the moment it is accepted. Each server process holds an
advisory lock (LEASE_CLASS, runner id) on a connection of its own while it lives, and stamps that
runner id on the imports it accepts. A sweep, at startup and then every SWEEP_SECONDS on every
replica, ends as error/interrupted the active imports whose runner's lock is gone: their process
died. The encryption key is never stored, so an interrupted import cannot resume; the client
submits it again.

Bounded memory. At most one chunk more than there are decode workers is in flight (downloaded,
decoded or waiting for COPY), never more than s5.max_parallel_chunks; decoding runs in worker
processes, so the event loop keeps serving, and goes straight into a float32 matrix (staging.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import multiprocessing
import os
import random
import time
import uuid
from collections.abc import Awaitable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import asyncpg
import numpy as np

from service.collections import store as collection_store
from service.collections.indexer import IndexBuilder
from service.collections.models import MAX_DIMENSION, IndexParams, Metric, Storage
from service.config import Settings
from service.db import Database
from service.db.connections import set_local
from service.errors import QuotaExceeded, TooManyRequests
from service.imports import store
from service.imports.formats import (
    ChunkInfo,
    ImportFailure,
    Manifest,
    check_manifest,
    decrypt,
    parse_manifest,
)
from service.imports.portal import S5Portal
from service.imports.staging import StagedChunk, TargetSpec, stage_chunk
from service.imports.worker_guard import guard_worker
from service.metrics import (
    IMPORT_CACHE_HITS,
    IMPORT_CACHE_MISSES,
    IMPORTS_FINISHED,
    S5_DOWNLOAD_SECONDS,
    S5_VECTORS_LOADED,
)
from service.quota import store as quota_store
from service.quota.service import QuotaService
from service.quota.usage import UsageMeter

log = logging.getLogger("vectorhive.imports")

LEASE_CLASS = 0x7669  # first key of the runner's advisory lock; the second is its runner id
SWEEP_SECONDS = 30.0


class _Cancelled(Exception):
    """The import's row left `loading` (DELETE, or a sweep) while this process was working on it."""


class _NameTaken(Exception):
    """A request created the collection while the import was about to."""


def _fingerprint(manifest: Manifest, plain: bytes) -> str:
    """What makes an import of the same manifest the same data: the SDK's `updated` stamp when it
    writes one (it does not change when the database is only read), else the manifest's content."""
    if manifest.updated is not None:
        return f"updated:{manifest.updated}:{manifest.vector_count}"
    return "sha256:" + hashlib.sha256(plain).hexdigest()


class ImportRunner:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        indexer: IndexBuilder,
        *,
        quotas: QuotaService | None = None,
        meter: UsageMeter | None = None,
    ) -> None:
        self.db = db
        self.quotas = quotas
        self.meter = meter
        self.s5 = settings.s5
        self.max_metadata_bytes = settings.collections.max_metadata_bytes
        self.indexer = indexer
        self.runner_id = 0
        self._lease: asyncpg.Connection | None = None
        self._tasks: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(self.s5.max_concurrent_imports)
        self._executor: ProcessPoolExecutor | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False
        self._lease_lock = asyncio.Lock()
        self._lease_task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._take_lease()
        await self.sweep()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="import-sweeper")

    async def _take_lease(self) -> None:
        assert self.db.url is not None
        conn = await asyncpg.connect(self.db.url)
        while True:
            candidate = random.randint(1, 2**31 - 1)  # noqa: S311 (uniqueness comes from the lock)
            if await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LEASE_CLASS, candidate):
                break
        # A lost lease (database restart) is replaced at once, not at the next sweep: imports
        # accepted meanwhile would carry a dead runner id and be swept as interrupted.
        conn.add_termination_listener(self._lease_lost)
        self._lease, self.runner_id = conn, candidate

    def _lease_lost(self, conn: Any) -> None:
        if self._closing or conn is not self._lease:
            return
        if self._lease_task is None or self._lease_task.done():
            self._lease_task = asyncio.get_running_loop().create_task(
                self._retake_lease(), name="import-lease"
            )

    async def _retake_lease(self) -> None:
        delay = 0.2
        while not self._closing:
            try:
                await self.lease_id()
                log.info("import runner took a new lease", extra={"runner_id": self.runner_id})
                return
            except Exception:
                await asyncio.sleep(delay)  # the database is still restarting
                delay = min(delay * 2, 5.0)

    async def lease_id(self) -> int:
        """The runner id of a live lease (a new one if the database lost ours)."""
        async with self._lease_lock:
            if self._lease is None or self._lease.is_closed():
                await self._take_lease()
        return self.runner_id

    async def sweep(self) -> None:
        # Our lease connection may be gone (a database restart): what we run is being swept by
        # others, and ends consistently (its commit checks its status). Take a new lease.
        await self.lease_id()
        async with self.db.transaction() as conn:
            ended = await store.sweep_orphans(conn, LEASE_CLASS)
        for import_id in ended:
            IMPORTS_FINISHED.labels("error").inc()
            log.warning("import interrupted: its server stopped", extra={"import_id": str(import_id)})

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self.sweep()
            except Exception:
                log.exception("import sweep failed; retrying later")

    async def close(self) -> None:
        self._closing = True
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        # The pool first: nothing below may keep it alive (the database may be unreachable).
        if self._executor is not None:
            executor, self._executor = self._executor, None
            workers = list(getattr(executor, "_processes", {}).values())
            executor.shutdown(wait=False, cancel_futures=True)
            for worker in workers:  # a worker busy with a chunk would otherwise finish it first
                with contextlib.suppress(Exception):
                    worker.terminate()
        # Each cancelled import records itself as interrupted, within db.final_write's bound.
        await asyncio.gather(*tasks, return_exceptions=True)
        # Imports still waiting for a slot were cancelled before they could say so: end them now
        # rather than leave them to another replica's sweep (bounded: the database may be down).
        await self.db.final_write(
            "recording waiting imports as interrupted (the next sweep by any server does it)",
            self._interrupt_own,
        )
        if self._lease is not None:
            if not self.db.unreachable_at_shutdown:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._lease.close(), timeout=5)
            if not self._lease.is_closed():
                self._lease.terminate()

    async def _interrupt_own(self) -> None:
        async with self.db.transaction() as conn:
            await store.interrupt_runner(conn, self.runner_id)

    # -- submitting and cancelling ----------------------------------------------------------------

    def submit(self, row: store.ImportRow, key: bytes | None) -> None:
        task = asyncio.create_task(self._run(row, key), name=f"import-{row.id}")
        self._tasks[row.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(row.id, None))

    def cancel_local(self, import_id: uuid.UUID) -> None:
        """Stop the work at once if this process runs it (the row is already `cancelled`)."""
        task = self._tasks.get(import_id)
        if task is not None:
            task.cancel()

    def active(self) -> int:
        return len(self._tasks)

    # -- running ----------------------------------------------------------------------------------

    async def _run(self, row: store.ImportRow, key: bytes | None) -> None:
        extra = {"import_id": str(row.id), "tenant_id": row.tenant_id}
        async with self._slots:
            assert self.db.url is not None
            try:
                conn = await asyncpg.connect(self.db.url)
            except (OSError, asyncpg.PostgresError) as exc:
                await self._fail(row.id, "internal_error", f"no database connection: {exc}")
                return
            try:
                claimed = await store.claim(conn, row.id, await self.lease_id())
                if claimed is None:
                    return  # cancelled before it started
                log.info("import started", extra=extra)
                async with asyncio.timeout(self.s5.loading_timeout_minutes * 60):
                    await self._load(conn, claimed, key)
                IMPORTS_FINISHED.labels("loaded").inc()
            except ImportFailure as failure:
                log.info("import failed", extra={**extra, "code": failure.code, "reason": failure.message})
                await self._fail(row.id, failure.code, failure.message)
            except TimeoutError:
                minutes = f"{self.s5.loading_timeout_minutes:g}"
                await self._fail(row.id, "timeout", f"the import did not finish within {minutes} minutes")
            except _Cancelled:
                IMPORTS_FINISHED.labels("cancelled").inc()
                log.info("import cancelled", extra=extra)
            except asyncio.CancelledError:
                if self._closing:
                    # Bounded, and skipped when the database is unreachable: a sweep by the next
                    # server (any replica) ends the import as interrupted all the same.
                    await self.db.final_write(
                        f"recording import {row.id} as interrupted (the next sweep by any server does it)",
                        lambda: self._fail(
                            row.id,
                            "interrupted",
                            "the server shut down before the import finished; "
                            "nothing was written; submit the import again",
                            quiet=True,
                        ),
                    )
                else:
                    IMPORTS_FINISHED.labels("cancelled").inc()
                raise
            except Exception as exc:
                log.exception("import failed unexpectedly", extra=extra)
                await self._fail(row.id, "internal_error", f"the import failed: {type(exc).__name__}")
            finally:
                if self.db.unreachable_at_shutdown:
                    conn.terminate()  # a polite close would wait for an answer that cannot come
                with contextlib.suppress(Exception):
                    await conn.close(timeout=5)

    async def _fail(self, import_id: uuid.UUID, code: str, message: str, *, quiet: bool = False) -> None:
        """Record the failure; quiet: raise database errors to the caller instead of logging them."""
        IMPORTS_FINISHED.labels("error").inc()
        try:
            async with self.db.transaction() as conn:
                await store.finish_failed(conn, import_id, code, message)
        except Exception:
            if quiet:
                raise
            log.exception("could not record an import's failure", extra={"import_id": str(import_id)})

    @staticmethod
    async def _download(kind: str, fetch: Awaitable[bytes]) -> bytes:
        started = time.perf_counter()
        data = await fetch
        S5_DOWNLOAD_SECONDS.labels(kind).observe(time.perf_counter() - started)
        return data

    async def _load(self, conn: Any, row: store.ImportRow, key: bytes | None) -> None:
        assert self.s5.portal_url is not None
        portal = S5Portal(
            self.s5.portal_url, timeout=self.s5.download_timeout_seconds, retries=self.s5.download_retries
        )
        try:
            raw = await self._download(
                "manifest", portal.fetch_path(row.manifest_path, missing="manifest_not_found")
            )
            plain = decrypt(raw, key) if key is not None else raw
            manifest = parse_manifest(plain, None)
            collection = await self._collection(row)
            check_manifest(
                manifest,
                user_address=row.user_address,
                dimension=collection.dimension if collection else None,
            )
            if collection is None and manifest.dimensions > MAX_DIMENSION[Storage.FLOAT32]:
                raise ImportFailure(
                    "invalid_manifest",
                    f"{manifest.dimensions} dimensions: a new collection holds at most "
                    f"{MAX_DIMENSION[Storage.FLOAT32]}",
                )
            fingerprint = _fingerprint(manifest, plain)
            if not await store.progress(
                conn,
                row.id,
                chunks_done=0,
                chunks_total=manifest.chunk_count,
                vectors_loaded=0,
                fingerprint=fingerprint,
            ):
                raise _Cancelled
            if collection is not None and await self._finish_from_cache(
                conn, row, collection, fingerprint, manifest.chunk_count
            ):
                return
            IMPORT_CACHE_MISSES.inc()
            spec = TargetSpec(
                dimension=manifest.dimensions,
                storage=(collection.storage if collection else Storage.FLOAT32).value,
                metric=(collection.metric if collection else Metric.COSINE).value,
                max_metadata_bytes=self.max_metadata_bytes,
            )
            async with self.db.transaction() as setup:
                await self.db.ensure_tenant_role(setup, row.tenant_id)
            await store.create_staging(
                conn,
                vector_type=collection_store.VECTOR_TYPE[Storage(spec.storage)],
                dimension=spec.dimension,
                tenant_role=self.db.tenant_role(row.tenant_id),
            )
            staging_started = time.perf_counter()
            staged, distinct = await self._stage_all(conn, portal, row, manifest, key, spec)
            staged_seconds = time.perf_counter() - staging_started
        finally:
            await portal.close()
        await self._merge(conn, row, manifest, staged, staged_seconds, distinct=distinct)

    async def _collection(self, row: store.ImportRow) -> collection_store.CollectionRow | None:
        async with self.db.tenant_transaction(row.tenant_id) as conn:
            collection = await collection_store.get(conn, row.collection)
        if collection is None and not row.create_collection:
            raise ImportFailure("collection_not_found", f"collection '{row.collection}' no longer exists")
        return collection

    async def _finish_from_cache(
        self,
        conn: Any,
        row: store.ImportRow,
        collection: collection_store.CollectionRow,
        fingerprint: str,
        chunks_total: int,
    ) -> bool:
        async with conn.transaction():
            loaded = await store.cached_result(
                conn,
                collection_id=collection.id,
                manifest_path=row.manifest_path,
                user_address=row.user_address,
                fingerprint=fingerprint,
                version=collection.data_version,
            )
            if loaded is None:
                return False
            # Still at that version (checked under the row's lock), or the cache does not apply.
            version = await conn.fetchval(
                "SELECT data_version FROM collections WHERE id = $1 FOR SHARE", collection.id
            )
            if version != collection.data_version:
                return False
            if not await store.finish_loaded(
                conn,
                row.id,
                collection_id=collection.id,
                collection_version=collection.data_version,
                vectors_loaded=loaded,
                chunks_total=chunks_total,
                cached=True,
            ):
                raise _Cancelled
        IMPORT_CACHE_HITS.inc()
        log.info("import answered from cache", extra={"import_id": str(row.id)})
        return True

    @staticmethod
    def _workers() -> int:
        return max(1, min(2, os.cpu_count() or 1))

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # spawn: the server's threads and event loop must not be copied into the workers.
            self._executor = ProcessPoolExecutor(
                max_workers=self._workers(),
                mp_context=multiprocessing.get_context("spawn"),
                # Workers exit when this process dies, even by SIGKILL (see worker_guard).
                initializer=guard_worker,
                initargs=(os.getpid(),),
            )
        return self._executor

    async def _pace(self, tenant_id: str, vectors: int) -> None:
        """Take the import's cost from the tenant's token bucket, waiting for tokens when it is empty.

        An import is background work: it slows down to the tenant's budget instead of failing.
        The cost is taken in parts no larger than the bucket, so that any chunk can pass."""
        if self.quotas is None or vectors <= 0:
            return
        per_vector = self.quotas.costs["import"]
        if per_vector <= 0:
            return
        capacity = (await self.quotas.limits_for(tenant_id)).token_bucket_capacity
        if per_vector > capacity:
            raise ImportFailure(
                "quota_exceeded",
                f"one imported vector costs {per_vector:g} tokens, more than this tenant's token bucket "
                f"holds ({capacity:g}); the operator must raise the capacity or lower cost_import_vector",
            )
        step = max(1, int(capacity // per_vector))
        remaining = vectors
        while remaining > 0:
            part = min(step, remaining)
            try:
                await self.quotas.charge(tenant_id, "import", part)
            except TooManyRequests as exc:
                await asyncio.sleep(float(exc.headers.get("Retry-After", "1")))
                continue
            remaining -= part

    async def _stage_one(
        self,
        portal: S5Portal,
        folder: str,
        info: ChunkInfo,
        key: bytes | None,
        spec: TargetSpec,
        tenant_id: str,
    ) -> StagedChunk:
        await self._pace(tenant_id, info.vector_count)
        raw = await self._download("chunk", portal.fetch_chunk(folder, info))
        loop = asyncio.get_running_loop()
        try:
            # In a list that the worker empties, and not kept here: this process holds the file
            # only until the pool has sent it.
            box = [raw]
            del raw
            return await loop.run_in_executor(self._pool(), stage_chunk, box, key, info, spec)
        except BrokenProcessPool:
            self._executor = None  # a worker died (e.g. killed for memory); the next import gets a new pool
            raise

    async def _stage_all(
        self,
        conn: Any,
        portal: S5Portal,
        row: store.ImportRow,
        manifest: Manifest,
        key: bytes | None,
        spec: TargetSpec,
    ) -> tuple[int, bool]:
        """Stage every chunk; -> (vectors staged, whether their ids are all distinct)."""
        folder = row.manifest_path.rsplit("/", 1)[0] if "/" in row.manifest_path else ""
        in_flight: set[asyncio.Task[StagedChunk]] = set()
        done_chunks = staged = 0
        digests: list[bytes] = []
        # A chunk in flight is a whole file in this process's memory (a 10,000 x 384 chunk is
        # ~76 MB of JSON), and only as many decode at once as there are workers: one more than
        # that keeps them busy (the next download overlaps a decode) without a backlog of files.
        limit = min(self.s5.max_parallel_chunks, self._workers() + 1)

        async def copy_finished() -> None:
            nonlocal done_chunks, staged
            finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                in_flight.discard(task)
                chunk = task.result()  # raises the chunk's ImportFailure
                try:
                    await store.copy_chunk(conn, chunk.copy_data)
                except (asyncpg.DataError, asyncpg.InvalidTextRepresentationError) as exc:
                    raise ImportFailure(
                        "invalid_manifest", f"chunk {chunk.chunk_id} holds a value PostgreSQL refuses: {exc}"
                    ) from None
                done_chunks += 1
                staged += chunk.count
                digests.append(chunk.id_digests)
                del chunk, task  # the COPY stream: freed before the next chunk is awaited
            if not await store.progress(
                conn,
                row.id,
                chunks_done=done_chunks,
                chunks_total=manifest.chunk_count,
                vectors_loaded=staged,
            ):
                raise _Cancelled

        try:
            for info in sorted(manifest.chunks, key=lambda c: c.chunk_id):
                while len(in_flight) >= limit:
                    await copy_finished()
                in_flight.add(
                    asyncio.create_task(self._stage_one(portal, folder, info, key, spec, row.tenant_id))
                )
            while in_flight:
                await copy_finished()
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
        everything = np.frombuffer(b"".join(digests), dtype=np.uint64)
        return staged, len(np.unique(everything)) == staged

    async def _merge(
        self,
        conn: Any,
        row: store.ImportRow,
        manifest: Manifest,
        staged: int,
        staged_seconds: float,
        *,
        distinct: bool,
    ) -> None:
        role = self.db.tenant_role(row.tenant_id)
        merge_started = time.perf_counter()
        try:
            async with conn.transaction():
                limits = await self.quotas.limits_for(row.tenant_id) if self.quotas else None
                if limits is not None and limits.has_storage_limits:
                    # Before any row lock, as upserts do: the quota lock comes first for every writer.
                    await quota_store.lock_tenant_quota(conn, row.tenant_id)
                collection, created = await self._collection_for_merge(conn, row, manifest)
                if collection.has_text and await store.staged_chunk_like_ids(conn):
                    raise ImportFailure(
                        "invalid_manifest",
                        f"collection '{row.collection}' keeps ids with '#' for its documents' chunks; "
                        "the database has such ids (import it into a collection without a model)",
                    )
                await set_local(conn, {"app.tenant_id": row.tenant_id, "role": role})
                if limits is not None and limits.has_storage_limits:
                    assert self.quotas is not None
                    # Before writing: a rolled-back merge would still leave its pages behind.
                    adding, adding_bytes = await store.staged_additions(conn, collection.table)
                    await self.quotas.check_vectors(conn, row.tenant_id, adding, adding_bytes)
                # A collection created by this transaction is invisible to every other writer and
                # empty: with distinct ids the rows go in as they are, no sort, no conflicts.
                total, inserted = await store.merge_staged(
                    conn, collection.table, plain_insert=created and distinct
                )
                updated = await collection_store.record_write(conn, collection.id, inserted)
                if not await store.finish_loaded(
                    conn,
                    row.id,
                    collection_id=collection.id,
                    collection_version=updated.data_version,
                    vectors_loaded=total,
                    chunks_total=manifest.chunk_count,
                    cached=False,
                ):
                    raise _Cancelled
        except asyncpg.UndefinedTableError:
            raise ImportFailure(
                "collection_not_found", f"collection '{row.collection}' was deleted during the import"
            ) from None
        except QuotaExceeded as exc:
            raise ImportFailure("quota_exceeded", exc.detail) from None
        S5_VECTORS_LOADED.inc(total)
        if self.meter is not None:
            self.meter.record(row.tenant_id, "vectors_imported", total)
        log.info(
            "import loaded",
            extra={
                "import_id": str(row.id),
                "vectors": total,
                "new_vectors": inserted,
                "staged": staged,
                "staging_seconds": round(staged_seconds, 3),
                "merge_seconds": round(time.perf_counter() - merge_started, 3),
            },
        )
        # At once, not after a quiet period: the merge was this import's only write.
        self.indexer.consider(updated, wait_for_quiet=False)

    async def _collection_for_merge(
        self, conn: Any, row: store.ImportRow, manifest: Manifest
    ) -> tuple[collection_store.CollectionRow, bool]:
        """The target collection, created here (in the merge transaction) when the import may;
        -> (collection, whether this transaction created it)."""
        await set_local(conn, {"app.tenant_id": row.tenant_id})
        collection = await conn.fetchrow(
            "SELECT id FROM collections WHERE tenant_id = $1 AND name = $2", row.tenant_id, row.collection
        )
        created = False
        if collection is not None:
            found = await collection_store.get_by_id(conn, collection["id"])
            assert found is not None
        elif not row.create_collection:
            raise ImportFailure("collection_not_found", f"collection '{row.collection}' no longer exists")
        else:
            if self.quotas is not None:
                await self.quotas.check_collections(conn, row.tenant_id, manifest.dimensions)
            defaults = IndexParams()
            try:
                async with conn.transaction():  # a savepoint: losing the race must not abort the merge
                    new = await collection_store.create(
                        conn,
                        tenant_id=row.tenant_id,
                        name=row.collection,
                        dimension=manifest.dimensions,
                        metric=Metric.COSINE,
                        storage=Storage.FLOAT32,
                        m=defaults.m,
                        ef_construction=defaults.ef_construction,
                        description=f"Imported from S5: {manifest.name}"[:1000],
                        tenant_role=self.db.tenant_role(row.tenant_id),
                    )
                    if new is None:
                        raise _NameTaken
            except _NameTaken:  # created by a request meanwhile: use it if it fits
                return await self._collection_for_merge(conn, row, manifest)
            found, created = new, True
        if found.dimension != manifest.dimensions:
            raise ImportFailure(
                "dimension_mismatch",
                f"the database has {manifest.dimensions} dimensions; the collection has {found.dimension}",
            )
        return found, created
