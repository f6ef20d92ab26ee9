"""Runs imports in the background: download, decode, stage, and one merge transaction.

Each import runs on a connection of its own (its session holds the import's staging table), in
three parts: the lease (lease.py: this process's runner id, and the sweep that ends the imports
of runners that died), the pipeline (pipeline.py: chunks downloaded, decoded in worker processes
and staged, memory bounded) and the merge (merge.py: one transaction, all or nothing). This
module claims an import, drives it through them and records how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import asyncpg

from service.collections import store as collection_store
from service.collections.indexer import IndexBuilder
from service.collections.models import MAX_DIMENSION, Metric, Storage
from service.config import Settings
from service.db import Database, ServiceConnection
from service.db.connections import service_connection
from service.imports import store
from service.imports.formats import ImportFailure, check_manifest, decrypt, parse_manifest
from service.imports.lease import RunnerLease
from service.imports.merge import Merger
from service.imports.models import ImportStatus
from service.imports.pipeline import ChunkStager, ImportCancelled, download, fingerprint_of
from service.imports.portal import S5Portal
from service.imports.staging import TargetSpec
from service.metrics import IMPORT_CACHE_MISSES, IMPORTS_FINISHED
from service.quota.service import QuotaService
from service.quota.usage import UsageMeter

log = logging.getLogger("vectorhive.imports")

_INTERRUPTED = "the server shut down before the import finished; nothing was written; submit the import again"


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
        self.s5 = settings.s5
        self.max_metadata_bytes = settings.collections.max_metadata_bytes
        self.lease = RunnerLease(db)
        self.stager = ChunkStager(settings.s5, quotas)
        self.merger = Merger(db, indexer, quotas, meter)
        self._tasks: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(self.s5.max_concurrent_imports)
        self._closing = False

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def runner_id(self) -> int:
        return self.lease.runner_id

    async def start(self) -> None:
        await self.lease.start()

    async def lease_id(self) -> int:
        """The runner id of a live lease (a new one if the database lost ours)."""
        return await self.lease.lease_id()

    async def close(self) -> None:
        self._closing = True
        await self.lease.stop_sweeping()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        # The pool first: nothing below may keep it alive (the database may be unreachable).
        self.stager.close()
        # Each cancelled import records itself as interrupted, within db.final_write's bound.
        await asyncio.gather(*tasks, return_exceptions=True)
        # Imports still waiting for a slot were cancelled before they could say so: end them now
        # rather than leave them to another replica's sweep (bounded: the database may be down).
        await self.db.final_write(
            "recording waiting imports as interrupted (the next sweep by any server does it)",
            self.lease.interrupt_own,
        )
        await self.lease.release()

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
            try:
                raw = await self.db.connect()
            except (OSError, asyncpg.PostgresError) as exc:
                await self._fail(row.id, "internal_error", f"no database connection: {exc}")
                return
            # The import's own session, as the service login; merge.py enters the tenant's context.
            conn = service_connection(raw)
            try:
                claimed = await store.claim(conn, row.id, await self.lease_id())
                if claimed is None:
                    return  # cancelled before it started
                log.info("import started", extra=extra)
                async with asyncio.timeout(self.s5.loading_timeout_minutes * 60):
                    await self._load(conn, claimed, key)
                IMPORTS_FINISHED.labels(ImportStatus.LOADED).inc()
            except ImportFailure as failure:
                log.info("import failed", extra={**extra, "code": failure.code, "reason": failure.message})
                await self._fail(row.id, failure.code, failure.message)
            except TimeoutError:
                minutes = f"{self.s5.loading_timeout_minutes:g}"
                await self._fail(row.id, "timeout", f"the import did not finish within {minutes} minutes")
            except ImportCancelled:
                IMPORTS_FINISHED.labels(ImportStatus.CANCELLED).inc()
                log.info("import cancelled", extra=extra)
            except asyncio.CancelledError:
                if self._closing:
                    # Bounded, and skipped when the database is unreachable: a sweep by the next
                    # server (any replica) ends the import as interrupted all the same.
                    await self.db.final_write(
                        f"recording import {row.id} as interrupted (the next sweep by any server does it)",
                        lambda: self._fail(row.id, "interrupted", _INTERRUPTED, quiet=True),
                    )
                else:
                    IMPORTS_FINISHED.labels(ImportStatus.CANCELLED).inc()
                raise
            except Exception as exc:
                log.exception("import failed unexpectedly", extra=extra)
                await self._fail(row.id, "internal_error", f"the import failed: {type(exc).__name__}")
            finally:
                if self.db.unreachable_at_shutdown:
                    raw.terminate()  # a polite close would wait for an answer that cannot come
                with contextlib.suppress(Exception):
                    await raw.close(timeout=5)

    async def _fail(self, import_id: uuid.UUID, code: str, message: str, *, quiet: bool = False) -> None:
        """Record the failure; quiet: raise database errors to the caller instead of logging them."""
        IMPORTS_FINISHED.labels(ImportStatus.ERROR).inc()
        try:
            async with self.db.transaction() as conn:
                await store.finish_failed(conn, import_id, code, message)
        except Exception:
            if quiet:
                raise
            log.exception("could not record an import's failure", extra={"import_id": str(import_id)})

    async def _load(self, conn: ServiceConnection, row: store.ImportRow, key: bytes | None) -> None:
        assert self.s5.portal_url is not None
        portal = S5Portal(
            self.s5.portal_url, timeout=self.s5.download_timeout_seconds, retries=self.s5.download_retries
        )
        try:
            raw = await download(
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
            fingerprint = fingerprint_of(manifest, plain)
            if not await store.progress(
                conn,
                row.id,
                chunks_done=0,
                chunks_total=manifest.chunk_count,
                vectors_loaded=0,
                fingerprint=fingerprint,
            ):
                raise ImportCancelled
            if collection is not None and await self.merger.finish_from_cache(
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
            staged, distinct = await self.stager.stage_all(conn, portal, row, manifest, key, spec)
            staged_seconds = time.perf_counter() - staging_started
        finally:
            await portal.close()
        await self.merger.merge(conn, row, manifest, staged, staged_seconds, distinct=distinct)

    async def _collection(self, row: store.ImportRow) -> collection_store.CollectionRow | None:
        async with self.db.tenant_transaction(row.tenant_id) as conn:
            collection = await collection_store.get(conn, row.collection)
        if collection is None and not row.create_collection:
            raise ImportFailure("collection_not_found", f"collection '{row.collection}' no longer exists")
        return collection
