"""The end of an import: its staged vectors go into the collection in one transaction.

All or nothing. The chunks were staged into a temporary table of the import's own connection
(pipeline.py); they go into the collection in one transaction, together with the import's
`loaded` status. A failure, a cancellation or a crash before that commit leaves the collection as
it was: the temporary table vanishes with its session. A cancellation that arrives after the
commit is refused (409), so what DELETE answers is what happened.
"""

from __future__ import annotations

import logging
import time

import asyncpg

from service.collections import store as collection_store
from service.collections.indexer import IndexBuilder
from service.collections.models import IndexParams, Metric, Storage
from service.db import Database, ServiceConnection, enter_tenant
from service.errors import QuotaExceeded
from service.imports import store
from service.imports.formats import ImportFailure, Manifest
from service.imports.pipeline import ImportCancelled
from service.metrics import IMPORT_CACHE_HITS, S5_VECTORS_LOADED
from service.quota import store as quota_store
from service.quota.service import QuotaService
from service.quota.usage import UsageMeter

log = logging.getLogger("vectorhive.imports")


class _NameTaken(Exception):
    """A request created the collection while the import was about to."""


class Merger:
    def __init__(
        self,
        db: Database,
        indexer: IndexBuilder,
        quotas: QuotaService | None,
        meter: UsageMeter | None,
    ) -> None:
        self.db = db
        self.indexer = indexer
        self.quotas = quotas
        self.meter = meter

    async def finish_from_cache(
        self,
        conn: ServiceConnection,
        row: store.ImportRow,
        collection: collection_store.CollectionRow,
        fingerprint: str,
        chunks_total: int,
    ) -> bool:
        """End the import as loaded without loading anything when an earlier import of the same
        data left the collection as it is now; False when the cache does not apply."""
        async with conn.transaction():
            tenant = await enter_tenant(conn, row.tenant_id, self.db.tenant_role(row.tenant_id))
            loaded = await store.cached_result(
                tenant,
                collection_id=collection.id,
                manifest_path=row.manifest_path,
                user_address=row.user_address,
                fingerprint=fingerprint,
                version=collection.data_version,
            )
            if loaded is None:
                return False
            # Still at that version (checked under the row's lock), or the cache does not apply.
            if await store.locked_data_version(tenant, collection.id) != collection.data_version:
                return False
            if not await store.finish_loaded(
                tenant,
                row.id,
                collection_id=collection.id,
                collection_version=collection.data_version,
                vectors_loaded=loaded,
                chunks_total=chunks_total,
                cached=True,
            ):
                raise ImportCancelled
        IMPORT_CACHE_HITS.inc()
        log.info("import answered from cache", extra={"import_id": str(row.id)})
        return True

    async def merge(
        self,
        conn: ServiceConnection,
        row: store.ImportRow,
        manifest: Manifest,
        staged: int,
        staged_seconds: float,
        *,
        distinct: bool,
    ) -> None:
        merge_started = time.perf_counter()
        try:
            async with conn.transaction():
                limits = await self.quotas.limits_for(row.tenant_id) if self.quotas else None
                if limits is not None and limits.has_storage_limits:
                    # Before any row lock, as upserts do: the quota lock comes first for every writer.
                    await quota_store.lock_tenant_quota(conn, row.tenant_id)
                collection, created = await self._collection_for_merge(conn, row, manifest)
                # From here on as the tenant's own role: its grants and row-level security apply.
                tenant = await enter_tenant(conn, row.tenant_id, self.db.tenant_role(row.tenant_id))
                if collection.has_text and await store.staged_chunk_like_ids(tenant):
                    raise ImportFailure(
                        "invalid_manifest",
                        f"collection '{row.collection}' keeps ids with '#' for its documents' chunks; "
                        "the database has such ids (import it into a collection without a model)",
                    )
                if limits is not None and limits.has_storage_limits:
                    assert self.quotas is not None
                    # Before writing: a rolled-back merge would still leave its pages behind.
                    adding, adding_bytes = await store.staged_additions(tenant, collection.table)
                    await self.quotas.check_vectors(tenant, row.tenant_id, adding, adding_bytes)
                # A collection created by this transaction is invisible to every other writer and
                # empty: with distinct ids the rows go in as they are, no sort, no conflicts.
                total, inserted = await store.merge_staged(
                    tenant, collection.table, plain_insert=created and distinct
                )
                updated = await collection_store.record_write(tenant, collection.id, inserted)
                if not await store.finish_loaded(
                    tenant,
                    row.id,
                    collection_id=collection.id,
                    collection_version=updated.data_version,
                    vectors_loaded=total,
                    chunks_total=manifest.chunk_count,
                    cached=False,
                ):
                    raise ImportCancelled
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
        self, conn: ServiceConnection, row: store.ImportRow, manifest: Manifest
    ) -> tuple[collection_store.CollectionRow, bool]:
        """The target collection, created here (in the merge transaction, as the service login:
        creating its table is DDL) when the import may; -> (collection, whether this transaction
        created it)."""
        collection_id = await store.collection_id(conn, row.tenant_id, row.collection)
        created = False
        if collection_id is not None:
            found = await collection_store.get_by_id(conn, collection_id)
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
