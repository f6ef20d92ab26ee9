"""An import's chunks: downloaded, decoded in worker processes, staged with binary COPY.

Bounded memory. At most one chunk more than there are decode workers is in flight (downloaded,
decoded or waiting for COPY), never more than s5.max_parallel_chunks. A chunk is downloaded into
a file of the import's own temporary folder (spool.py), never into this process's memory; a
decode worker reads it from there (no copy of it crosses a pipe), decrypting a piece at a time,
and decodes it straight into a float32 matrix (staging.py). Decoding runs in worker processes, so
the event loop keeps serving.
The chunks go into a temporary table of the import's own connection (store.create_staging);
merge.py moves them into the collection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import multiprocessing
import os
import time
from collections.abc import Awaitable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

import asyncpg
import numpy as np

from service.config import S5Settings
from service.db import ServiceConnection
from service.errors import TooManyRequests
from service.imports import store
from service.imports.formats import ChunkInfo, ImportFailure, Manifest
from service.imports.portal import S5Portal
from service.imports.spool import Spool, sweep_abandoned
from service.imports.staging import StagedChunk, TargetSpec, stage_chunk_file
from service.imports.worker_guard import guard_worker
from service.metrics import S5_DOWNLOAD_SECONDS
from service.quota.service import QuotaService

_T = TypeVar("_T")


class ImportCancelled(Exception):
    """The import's row left `loading` (DELETE, or a sweep) while this process was working on it."""


def fingerprint_of(manifest: Manifest, plain: bytes) -> str:
    """What makes an import of the same manifest the same data: the SDK's `updated` stamp when it
    writes one (it does not change when the database is only read), else the manifest's content."""
    if manifest.updated is not None:
        return f"updated:{manifest.updated}:{manifest.vector_count}"
    return "sha256:" + hashlib.sha256(plain).hexdigest()


async def download(kind: str, fetch: Awaitable[_T]) -> _T:
    started = time.perf_counter()
    data = await fetch
    S5_DOWNLOAD_SECONDS.labels(kind).observe(time.perf_counter() - started)
    return data


class ChunkStager:
    """The decode workers (one process pool for all imports of this process) and the staging of
    an import's chunks, paced by its tenant's token bucket."""

    def __init__(self, settings: S5Settings, quotas: QuotaService | None) -> None:
        self.s5 = settings
        self.quotas = quotas
        self._executor: ProcessPoolExecutor | None = None
        sweep_abandoned()  # what a killed predecessor on this machine left behind

    @staticmethod
    def workers() -> int:
        return max(1, min(2, os.cpu_count() or 1))

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # spawn: the server's threads and event loop must not be copied into the workers.
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers(),
                mp_context=multiprocessing.get_context("spawn"),
                # Workers exit when this process dies, even by SIGKILL (see worker_guard).
                initializer=guard_worker,
                initargs=(os.getpid(),),
            )
        return self._executor

    def close(self) -> None:
        """Stop the workers at once, without waiting for what they decode (shutdown)."""
        if self._executor is not None:
            executor, self._executor = self._executor, None
            workers = list(getattr(executor, "_processes", {}).values())
            executor.shutdown(wait=False, cancel_futures=True)
            for worker in workers:  # a worker busy with a chunk would otherwise finish it first
                with contextlib.suppress(Exception):
                    worker.terminate()

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
        spool: Spool,
    ) -> StagedChunk:
        await self._pace(tenant_id, info.vector_count)
        path = spool.file(f"chunk-{info.chunk_id}")
        try:
            try:
                with path.open("wb") as file:
                    await download("chunk", portal.fetch_chunk(folder, info, file))
            except OSError as exc:  # the server's own disk (full, gone): not the portal's fault
                raise ImportFailure(
                    "download_failed",
                    f"chunk {info.chunk_id}: the server could not keep the download ({exc.strerror or exc})",
                ) from None
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool(), stage_chunk_file, str(path), key, info, spec)
        except BrokenProcessPool:
            self._executor = None  # a worker died (e.g. killed for memory); the next import gets a new pool
            raise
        finally:
            path.unlink(missing_ok=True)  # staged or failed: its rows are in the COPY data now

    async def stage_all(
        self,
        conn: ServiceConnection,
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
        # A chunk in flight is a whole file on disk and then in a worker's memory (a 10,000 x 384
        # chunk is ~76 MB of JSON), and only as many decode at once as there are workers: one more
        # than that keeps them busy (the next download overlaps a decode) without a backlog.
        limit = min(self.s5.max_parallel_chunks, self.workers() + 1)
        try:
            spool = Spool(row.id)
        except OSError as exc:  # the server's temporary directory: missing, read-only, full
            raise ImportFailure(
                "download_failed",
                f"the server could not make a folder for the downloads ({exc.strerror or exc})",
            ) from None

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
                raise ImportCancelled

        try:
            for info in sorted(manifest.chunks, key=lambda c: c.chunk_id):
                while len(in_flight) >= limit:
                    await copy_finished()
                in_flight.add(
                    asyncio.create_task(
                        self._stage_one(portal, folder, info, key, spec, row.tenant_id, spool)
                    )
                )
            while in_flight:
                await copy_finished()
        finally:
            try:
                for task in in_flight:
                    task.cancel()
                await asyncio.gather(*in_flight, return_exceptions=True)
            finally:  # even when cancelled again while waiting for them (the thread goes on)
                await asyncio.to_thread(spool.close)  # removing files can wait for the disk
        everything = np.frombuffer(b"".join(digests), dtype=np.uint64)
        return staged, len(np.unique(everything)) == staged
