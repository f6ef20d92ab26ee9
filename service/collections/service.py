"""The domain rules of collections, vectors and search. The tenant always comes from the Principal."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import msgspec
import numpy as np
from pgvector import HalfVector, Vector

from service.auth.models import COLLECTION_NAME_RULE, is_collection_name
from service.auth.principal import Principal
from service.collections import store
from service.collections.filters import compile_filter
from service.collections.indexer import IndexBuilder
from service.collections.models import (
    MAX_DIMENSION,
    Collection,
    CollectionPage,
    CreateCollectionRequest,
    DeleteRequest,
    DeleteResult,
    EmbeddingState,
    IndexState,
    Metric,
    UpsertRequest,
    UpsertResult,
    VectorPage,
    VectorRecord,
)
from service.collections.search import SearchOperations, StaleCollection, _as_list
from service.collections.store import CollectionRow, TextBinding
from service.collections.vector_codec import check_forms, items_matrix
from service.config import CollectionsSettings, DocumentsSettings
from service.db import Database
from service.db.notify import COLLECTIONS_CHANNEL, NotificationHub
from service.embeddings.service import EmbeddingService
from service.errors import Conflict, InvalidRequest, NotFound, ServiceError
from service.pagination import decode_cursor, split_page
from service.pool import TenantPool
from service.quota.service import Operation, QuotaService
from service.quota.usage import Metric as Metric_
from service.quota.usage import UsageMeter

log = logging.getLogger("vectorhive.collections")

_encode_json = msgspec.json.Encoder().encode

# Bytes PostgreSQL spends per stored row besides its values (tuple header, item pointer, primary key
# and metadata index entries): part of the estimate a storage-quota check adds to what is on disk.
_ROW_OVERHEAD = 64


def _problem_at(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {message}", errors=[{"field": field, "message": message}])


def _not_a_text_collection(name: str) -> InvalidRequest:
    return InvalidRequest(
        f"Collection '{name}' is not bound to an embedding model, so it has no documents or texts; "
        'create a collection with "embedding": {"model": ...} for text, or search it by vector.',
        code="not_a_text_collection",
    )


# Squared lengths pgvector can add up in float32 without losing them: above FLT_MIN (so no
# underflow to zero), and at most FLT_MAX / 4 (so |a - b|^2 <= 2|a|^2 + 2|b|^2 stays finite).
_MIN_SQUARED_LENGTH = float(np.finfo(np.float32).tiny)
_MAX_SQUARED_LENGTH = float(np.finfo(np.float32).max) / 4


class CollectionService(SearchOperations):
    def __init__(
        self,
        db: Database,
        settings: CollectionsSettings,
        indexer: IndexBuilder,
        *,
        quotas: QuotaService | None = None,
        meter: UsageMeter | None = None,
        embeddings: EmbeddingService | None = None,
        documents: DocumentsSettings | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.indexer = indexer
        self.quotas = quotas
        self.meter = meter
        self.embeddings = embeddings
        self.documents = documents or DocumentsSettings()
        # (tenant, name) -> the collection's row, for the search path (see _in_collection).
        self._rows: TenantPool[tuple[str, str], CollectionRow] = TenantPool(
            "collection_rows",
            max_size=settings.metadata_cache_size,
            max_per_tenant=settings.metadata_cache_per_tenant,
            ttl=settings.metadata_cache_ttl_seconds,
        )

    def _record(self, tenant_id: str, metric: Metric_, quantity: int) -> None:
        if self.meter is not None:
            self.meter.record(tenant_id, metric, quantity)

    async def _charge(self, tenant_id: str, operation: Operation, units: int) -> None:
        if self.quotas is not None:
            await self.quotas.charge(tenant_id, operation, units)

    # -- collections ------------------------------------------------------------------------------

    def _to_model(self, row: CollectionRow, size_bytes: int) -> Collection:
        return Collection(
            name=row.name,
            qualified_name=f"{row.tenant_id}:{row.name}",
            dimension=row.dimension,
            metric=row.metric,
            storage=row.storage,
            index=IndexState(
                status=row.index_status,
                m=row.hnsw_m,
                ef_construction=row.hnsw_ef_construction,
                build_threshold=self.settings.index_threshold,
                started_at=row.index_started_at,
                finished_at=row.index_finished_at,
                error=row.index_error,
            ),
            vector_count=row.vector_count,
            size_bytes=size_bytes,
            description=row.description,
            created_at=row.created_at,
            embedding=EmbeddingState(
                model=row.embedding_model,
                chunk_tokens=row.chunk_tokens or 0,
                chunk_overlap=row.chunk_overlap or 0,
                text_search_config=row.text_search_config or "",
            )
            if row.embedding_model is not None
            else None,
        )

    async def _require(self, conn: Any, principal: Principal, name: str) -> CollectionRow:
        # A collection outside the key's scope looks exactly like one that does not exist.
        row = await store.get(conn, name) if principal.may_see_collection(name) else None
        if row is None:
            raise NotFound(f"Collection '{name}' does not exist.")
        return row

    @staticmethod
    @asynccontextmanager
    async def _mapping_missing_table(name: str) -> AsyncIterator[None]:
        """A collection dropped by a concurrent request is simply not found (404, not 500)."""
        try:
            yield
        except asyncpg.UndefinedTableError:
            raise NotFound(f"Collection '{name}' does not exist.") from None

    async def _lookup(self, principal: Principal, name: str) -> CollectionRow:
        async with self._in_collection(principal, name) as (_, row):
            return row

    async def text_collection(self, principal: Principal, name: str) -> CollectionRow:
        """The collection, which must be bound to an embedding model (400 otherwise)."""
        row = await self._lookup(principal, name)
        if not row.has_text:
            raise _not_a_text_collection(name)
        return row

    def in_collection(
        self, principal: Principal, name: str
    ) -> contextlib.AbstractAsyncContextManager[tuple[Any, CollectionRow]]:
        """A tenant transaction on the collection, for features that write into it (documents)."""
        return self._in_collection(principal, name)

    async def check_storage(
        self,
        conn: Any,
        tenant_id: str,
        row: CollectionRow,
        ids: list[str],
        metadata_json: list[str],
        extra: int = 0,
    ) -> None:
        await self._check_storage(conn, tenant_id, row, ids, metadata_json, extra)

    async def count_write(self, conn: Any, row: CollectionRow, delta: int) -> CollectionRow:
        """Last statement of a write to the collection: its vector count and data version."""
        return await store.record_write(conn, row.id, delta)

    def check_vectors(self, row: CollectionRow, vectors: Any, field: Callable[[int], str]) -> Any:
        """The vectors as a float32 matrix the collection can store and score (400 naming the field)."""
        return self._vectors_matrix(row, vectors, field)

    async def charge_upsert(self, tenant_id: str, vectors: int) -> None:
        await self._charge(tenant_id, "upsert", vectors)

    def deleted(self, tenant_id: str, vectors: int) -> None:
        self._record(tenant_id, "vectors_deleted", vectors)

    def written(self, tenant_id: str, updated: CollectionRow, vectors: int) -> None:
        """After a committed write: meter it and consider building the index."""
        self.indexer.consider(updated)
        self._record(tenant_id, "vectors_written", vectors)

    @asynccontextmanager
    async def _in_collection(
        self, principal: Principal, name: str, settings: dict[str, str] | None = None, *, cached: bool = False
    ) -> AsyncIterator[tuple[Any, CollectionRow]]:
        """A tenant transaction and the collection it works on (404 if absent, or dropped meanwhile).

        cached: take the collection's row from this process's cache when it is there (the search
        path: one round trip less). A cached row may be stale only in what searches do not rely on
        (counts, data_version) or in its index status (an index that became ready is used from
        the notification on); a cached row of a dropped collection names a table that is gone,
        which raises StaleCollection for the caller to retry uncached, as does any refusal made
        while working on a cached row."""
        tenant_id = principal.require_tenant()
        key = (tenant_id, name)
        row = self._rows.get(key) if cached and principal.may_see_collection(name) else None
        if row is not None:
            try:
                async with self.db.tenant_transaction(tenant_id, settings) as conn:
                    yield conn, row
            except (asyncpg.UndefinedTableError, ServiceError) as exc:
                # A refusal may come from the stale row itself (a dimension that has changed): the
                # caller asks again without the cache, and a real refusal is raised from there.
                self._rows.pop(key)
                raise StaleCollection(name) from exc
            return
        async with self._mapping_missing_table(name), self.db.tenant_transaction(tenant_id, settings) as conn:
            row = await self._require(conn, principal, name)
            self._rows.put(tenant_id, key, row)
            yield conn, row

    def attach(self, hub: NotificationHub) -> None:
        """Cached collection rows leave the cache when any process drops, renames or indexes the
        collection (a trigger on `collections` notifies), and all of them when the listener
        reconnects (notifications may have been missed)."""
        hub.subscribe(COLLECTIONS_CHANNEL, self._forget)
        hub.on_reset(self._rows.clear)

    def _forget(self, payload: str) -> None:
        tenant_id, _, name = payload.partition(":")
        self._rows.pop((tenant_id, name))

    def _text_binding(self, request: CreateCollectionRequest) -> tuple[int, TextBinding | None]:
        """The collection's dimension, and its binding to a model if it names one."""
        binding = request.embedding
        if binding is None:
            if request.dimension is None:
                # Worded as the schema's own "required" errors (a plain collection must give it).
                raise InvalidRequest(
                    "dimension is required",
                    errors=[{"source": "body", "message": "is required", "field": "dimension"}],
                )
            return request.dimension, None
        if self.embeddings is None:
            raise InvalidRequest("This server has no embedding models.", code="embeddings_disabled")
        model = self.embeddings.describe(binding.model)
        if request.dimension is not None and request.dimension != model.dimension:
            raise _problem_at(
                "dimension",
                f"{request.dimension} does not match model '{model.name}', which makes {model.dimension}-d "
                "vectors (omit dimension to take the model's)",
            )
        chunk_tokens = binding.chunk_tokens or model.max_tokens
        if chunk_tokens > model.max_tokens:
            raise _problem_at(
                "embedding.chunk_tokens",
                f"{chunk_tokens} exceeds model '{model.name}''s window of {model.max_tokens} tokens",
            )
        overlap = binding.chunk_overlap if binding.chunk_overlap is not None else chunk_tokens // 8
        if overlap >= chunk_tokens // 2:
            raise _problem_at(
                "embedding.chunk_overlap",
                f"{overlap} must be less than half of chunk_tokens ({chunk_tokens})",
            )
        return model.dimension, TextBinding(
            model=model.name,
            chunk_tokens=chunk_tokens,
            chunk_overlap=overlap,
            text_search_config=binding.text_search_config or self.documents.text_search_config,
        )

    async def create(self, principal: Principal, request: CreateCollectionRequest) -> Collection:
        assert principal.tenant_id is not None
        if not is_collection_name(request.name):
            raise _problem_at("name", f"must be {COLLECTION_NAME_RULE}")
        dimension, text = self._text_binding(request)
        limit = MAX_DIMENSION[request.storage]
        if dimension > limit:
            raise _problem_at(
                "dimension",
                f"{dimension} exceeds the HNSW limit of {limit} for {request.storage} storage",
            )
        if not principal.may_see_collection(request.name):
            raise InvalidRequest(
                f"This key is limited to other collections and cannot create '{request.name}'.",
                errors=[{"field": "name", "message": "outside the key's collections"}],
            )
        async with self.db.transaction() as conn:
            if text is not None and not await store.text_search_config_exists(conn, text.text_search_config):
                raise _problem_at(
                    "embedding.text_search_config",
                    f"'{text.text_search_config}' is not a text search configuration of this database "
                    "(english, simple, german, ...: see pg_ts_config)",
                )
            if self.quotas is not None:
                await self.quotas.check_collections(conn, principal.tenant_id, dimension)
            await self.db.ensure_tenant_role(conn, principal.tenant_id)
            row = await store.create(
                conn,
                tenant_role=self.db.tenant_role(principal.tenant_id),
                tenant_id=principal.tenant_id,
                name=request.name,
                text=text,
                dimension=dimension,
                metric=request.metric,
                storage=request.storage,
                m=request.index.m,
                ef_construction=request.index.ef_construction,
                description=request.description,
            )
            if row is None:
                raise Conflict(f"Collection '{request.name}' already exists.")
            size = (await store.sizes(conn, [row]))[row.id]
        log.info("collection created", extra={"tenant_id": principal.tenant_id, "collection_id": row.id})
        return self._to_model(row, size)

    async def get(self, principal: Principal, name: str) -> Collection:
        async with self._in_collection(principal, name) as (conn, row):
            return self._to_model(row, (await store.sizes(conn, [row]))[row.id])

    async def list_page(self, principal: Principal, *, cursor: str | None, limit: int) -> CollectionPage:
        assert principal.tenant_id is not None
        only = sorted(principal.collections) if principal.collections is not None else None
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            rows = await store.list_page(conn, after=decode_cursor(cursor), limit=limit + 1, only=only)
            rows, next_cursor = split_page(rows, limit, lambda r: r.name)
            sizes = await store.sizes(conn, rows)
        return CollectionPage(items=[self._to_model(r, sizes[r.id]) for r in rows], next_cursor=next_cursor)

    async def delete(self, principal: Principal, name: str) -> None:
        assert principal.tenant_id is not None
        row = await self._lookup(principal, name)
        # An index build holds a lock DROP TABLE would wait for: stop it first.
        await self.indexer.cancel(row.id)
        async with self._mapping_missing_table(name), self.db.transaction() as conn:
            # Table first, then the row: writers lock in that order too (rows of the table, then
            # the collection's counter), so the two cannot deadlock. Waits for running writes.
            await conn.execute(f"LOCK TABLE {row.table} IN ACCESS EXCLUSIVE MODE")
            locked = await conn.fetchrow(
                "SELECT id FROM collections WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
                row.id,
                principal.tenant_id,
            )
            if locked is None:
                raise NotFound(f"Collection '{name}' does not exist.")
            await store.drop(conn, row)
        log.info("collection deleted", extra={"tenant_id": principal.tenant_id, "collection_id": row.id})

    # -- vectors ----------------------------------------------------------------------------------

    def _vectors_matrix(
        self,
        row: CollectionRow,
        vectors: list[list[float]] | np.ndarray[Any, Any],
        field: Callable[[int], str],
    ) -> Any:
        """The vectors as a checked float32 matrix (a matrix given, from vector_codec, is checked as is)."""
        if isinstance(vectors, np.ndarray):
            matrix = vectors
        else:
            for i, values in enumerate(vectors):
                if len(values) != row.dimension:
                    raise _problem_at(
                        field(i), f"has {len(values)} values; the collection's dimension is {row.dimension}"
                    )
            with np.errstate(over="ignore"):  # values beyond float32 become inf, refused just below
                matrix = np.asarray(vectors, dtype=np.float32)
        finite = np.isfinite(matrix).all(axis=1)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise _problem_at(field(bad), "contains NaN or Infinity (or a value too large for float32)")
        if row.metric == Metric.COSINE:
            zero = ~np.any(matrix != 0, axis=1)
            if zero.any():
                raise _problem_at(
                    field(int(np.flatnonzero(zero)[0])), "is all zeros: it has no cosine similarity"
                )
        if row.storage == "float16" and (np.abs(matrix) > 65504).any():
            bad = int(np.flatnonzero((np.abs(matrix) > 65504).any(axis=1))[0])
            raise _problem_at(field(bad), "has a value too large for float16 storage (|x| > 65504)")
        # pgvector sums squares and products in float32 over the stored values (float16 ones are
        # rounded first): a length that underflows to zero gives cosine NaN, one that overflows
        # gives inf or NaN for every metric. Scores are numbers, so such vectors are refused.
        stored = matrix.astype(np.float16) if row.storage == "float16" else matrix
        squares = np.einsum("ij,ij->i", stored.astype(np.float64), stored.astype(np.float64))
        too_long = squares > _MAX_SQUARED_LENGTH
        if too_long.any():
            raise _problem_at(
                field(int(np.flatnonzero(too_long)[0])),
                "is too long: its scores would overflow float32; scale it down (length at most 9.2e18)",
            )
        if row.metric == Metric.COSINE:
            tiny = squares < _MIN_SQUARED_LENGTH
            if tiny.any():
                where = " in float16 storage" if row.storage == "float16" else ""
                raise _problem_at(
                    field(int(np.flatnonzero(tiny)[0])),
                    f"is too close to zero{where} (its squared length underflows float32): "
                    "it has no cosine similarity; scale it up",
                )
        return matrix

    def _encoder(self, row: CollectionRow) -> Callable[[Any], Any]:
        return HalfVector if row.storage == "float16" else Vector

    async def upsert(self, principal: Principal, name: str, request: UpsertRequest) -> UpsertResult:
        items = request.vectors
        if len(items) > self.settings.max_batch_vectors:
            raise _problem_at(
                "vectors", f"{len(items)} vectors; at most {self.settings.max_batch_vectors} per request"
            )
        check_forms(items)  # before any charge: each item has vector or vector_b64
        seen: dict[str, int] = {}
        metadata_json: list[str] = []
        for i, item in enumerate(items):
            first = seen.setdefault(item.id, i)
            if first != i:
                raise _problem_at(f"vectors[{i}].id", f"'{item.id}' repeats vectors[{first}].id")
            encoded = _encode_json(item.metadata or {})
            if len(encoded) > self.settings.max_metadata_bytes:
                raise _problem_at(
                    f"vectors[{i}].metadata",
                    f"{len(encoded)} bytes of JSON; at most {self.settings.max_metadata_bytes}",
                )
            metadata_json.append(encoded.decode())

        assert principal.tenant_id is not None
        await self._charge(principal.tenant_id, "upsert", len(items))
        async with self._in_collection(principal, name) as (conn, row):
            if row.has_text:
                reserved = next((i for i, item in enumerate(items) if "#" in item.id), None)
                if reserved is not None:
                    raise _problem_at(
                        f"vectors[{reserved}].id",
                        "contains '#', which this collection keeps for its documents' chunks "
                        "(<document id>#<chunk index>); store documents through .../documents",
                    )
            matrix = self._vectors_matrix(
                row,
                items_matrix(items, row.dimension),
                lambda i: (
                    f"vectors[{i}].vector" if items[i].vector_b64 is None else f"vectors[{i}].vector_b64"
                ),
            )
            await self._check_storage(conn, principal.tenant_id, row, list(seen), metadata_json)
            encode = self._encoder(row)
            inserted = await store.upsert(
                conn, row, [(item.id, encode(matrix[i]), metadata_json[i]) for i, item in enumerate(items)]
            )
            updated = await store.record_write(conn, row.id, inserted)
        self.indexer.consider(updated)
        self._record(principal.tenant_id, "vectors_written", len(items))
        return UpsertResult(upserted=len(items))

    async def _check_storage(
        self,
        conn: Any,
        tenant_id: str,
        row: CollectionRow,
        ids: list[str],
        metadata_json: list[str],
        extra: int = 0,
    ) -> None:
        """Before writing: 403 quota_exceeded if the new ids or their estimated bytes (plus `extra`,
        such as documents' text) do not fit."""
        if self.quotas is None or not (await self.quotas.limits_for(tenant_id)).has_storage_limits:
            return
        new = await store.count_new_ids(conn, row, ids)
        per_vector = row.dimension * (2 if row.storage == "float16" else 4) + 8 + _ROW_OVERHEAD
        estimate = (
            len(ids) * per_vector + sum(len(m) for m in metadata_json) + sum(len(i) for i in ids) + extra
        )
        await self.quotas.check_vectors(conn, tenant_id, new, estimate)

    async def get_vector(self, principal: Principal, name: str, vector_id: str) -> VectorRecord:
        async with self._in_collection(principal, name) as (conn, row):
            record = await store.get_vector(conn, row, vector_id)
        if record is None:
            raise NotFound(f"Vector '{vector_id}' does not exist in collection '{name}'.")
        return VectorRecord(
            id=record["id"],
            metadata=msgspec.json.decode(record["metadata"]),
            vector=_as_list(record["embedding"]),
        )

    async def scroll(
        self, principal: Principal, name: str, *, cursor: str | None, limit: int, include_vector: bool
    ) -> VectorPage:
        async with self._in_collection(principal, name) as (conn, row):
            records = await store.scroll(
                conn, row, after=decode_cursor(cursor), limit=limit + 1, include_vector=include_vector
            )
        records, next_cursor = split_page(records, limit, lambda r: str(r["id"]))
        items = [
            VectorRecord(
                id=r["id"],
                metadata=msgspec.json.decode(r["metadata"]),
                vector=_as_list(r["embedding"]) if include_vector else None,
            )
            for r in records
        ]
        return VectorPage(items=items, next_cursor=next_cursor)

    async def delete_vector(self, principal: Principal, name: str, vector_id: str) -> None:
        result = await self.delete_vectors(principal, name, DeleteRequest(ids=[vector_id]))
        if result.deleted == 0:
            raise NotFound(f"Vector '{vector_id}' does not exist in collection '{name}'.")

    @staticmethod
    def _deletion(request: DeleteRequest, first_param: int) -> tuple[str, list[Any]]:
        """The WHERE of a delete request, its parameters numbered from first_param (400 for a
        request that gives both or neither of ids and filter, or an empty filter)."""
        if (request.ids is None) == (request.filter is None):
            raise InvalidRequest(
                "Give exactly one of 'ids' and 'filter'.",
                errors=[{"field": "ids", "message": "exactly one of ids and filter"}],
            )
        if request.filter == {}:
            raise InvalidRequest(
                "An empty filter would delete every vector; give ids or conditions, "
                "or delete the collection.",
                errors=[{"field": "filter", "message": "empty"}],
            )
        if request.filter is not None:
            compiled = compile_filter(request.filter, first_param=first_param)
            return compiled.sql, compiled.params
        # Repeated ids count once, as a delete removes each row once.
        return f"id = ANY(${first_param}::text[])", [request.ids]

    async def delete_vectors(self, principal: Principal, name: str, request: DeleteRequest) -> DeleteResult:
        where, params = self._deletion(request, first_param=1)
        async with self._in_collection(principal, name) as (conn, row):
            deleted = await store.delete_where(conn, row, where, params)
            if deleted:
                if row.has_text:
                    await store.drop_documents_without_chunks(conn, row)
                await store.record_write(conn, row.id, -deleted)
        self._record(principal.require_tenant(), "vectors_deleted", deleted)
        return DeleteResult(deleted=deleted)

    # -- counting (MCP's delete with dry_run) -------------------------------------------------------

    async def count_matching(self, principal: Principal, name: str, request: DeleteRequest) -> int:
        """How many vectors delete_vectors(request) would delete now, refusing what it refuses."""
        where, params = self._deletion(request, first_param=2)
        async with self._in_collection(principal, name) as (conn, row):
            # No cap: a dry run reports exactly what would go.
            return await store.count_matches(conn, row, where, params, up_to=2**62)
