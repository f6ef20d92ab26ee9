"""The domain rules of collections, vectors and search. The tenant always comes from the Principal."""

from __future__ import annotations

import logging
import time
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
    BatchSearchResult,
    Collection,
    CollectionPage,
    CreateCollectionRequest,
    DeleteRequest,
    DeleteResult,
    IndexState,
    IndexStatus,
    Metric,
    SearchHit,
    SearchRequest,
    SearchResult,
    UpsertRequest,
    UpsertResult,
    VectorPage,
    VectorRecord,
)
from service.collections.store import CollectionRow
from service.config import CollectionsSettings
from service.db import Database
from service.db.database import set_local
from service.errors import Conflict, InvalidRequest, NotFound
from service.pagination import decode_cursor, split_page
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


# Squared lengths pgvector can add up in float32 without losing them: above FLT_MIN (so no
# underflow to zero), and at most FLT_MAX / 4 (so |a - b|^2 <= 2|a|^2 + 2|b|^2 stays finite).
_MIN_SQUARED_LENGTH = float(np.finfo(np.float32).tiny)
_MAX_SQUARED_LENGTH = float(np.finfo(np.float32).max) / 4


def _as_list(value: Any) -> list[float]:
    converted: list[float] = value.to_list() if hasattr(value, "to_list") else list(value)
    return converted


# A float in a JSON response ("-0.12345678," and the like); a hit's id, score and punctuation.
_JSON_BYTES_PER_FLOAT = 12
_HIT_OVERHEAD_BYTES = 48


class _ResponseBudget:
    """The bytes a search response is growing to; refuses past collections.max_search_response_bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def add(self, hit_bytes: int) -> None:
        self.used += hit_bytes + _HIT_OVERHEAD_BYTES
        if self.used > self.limit:
            raise InvalidRequest(
                f"The response would exceed {self.limit} bytes (collections.max_search_response_bytes); "
                "ask for a smaller top_k, fewer queries, or include_metadata/include_vector false.",
                code="response_too_large",
                extra={"limit": "max_search_response_bytes", "value": self.limit},
            )

    @property
    def mib(self) -> int:
        """Whole MiB of the response beyond its first, for the token bucket (small answers cost
        what a search always cost)."""
        return self.used // (1024 * 1024)


class CollectionService:
    def __init__(
        self,
        db: Database,
        settings: CollectionsSettings,
        indexer: IndexBuilder,
        *,
        quotas: QuotaService | None = None,
        meter: UsageMeter | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.indexer = indexer
        self.quotas = quotas
        self.meter = meter

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

    @asynccontextmanager
    async def _in_collection(
        self, principal: Principal, name: str, settings: dict[str, str] | None = None
    ) -> AsyncIterator[tuple[Any, CollectionRow]]:
        """A tenant transaction and the collection it works on (404 if absent, or dropped meanwhile)."""
        assert principal.tenant_id is not None
        async with (
            self._mapping_missing_table(name),
            self.db.tenant_transaction(principal.tenant_id, settings) as conn,
        ):
            yield conn, await self._require(conn, principal, name)

    async def create(self, principal: Principal, request: CreateCollectionRequest) -> Collection:
        assert principal.tenant_id is not None
        if not is_collection_name(request.name):
            raise _problem_at("name", f"must be {COLLECTION_NAME_RULE}")
        limit = MAX_DIMENSION[request.storage]
        if request.dimension > limit:
            raise _problem_at(
                "dimension",
                f"{request.dimension} exceeds the HNSW limit of {limit} for {request.storage} storage",
            )
        if not principal.may_see_collection(request.name):
            raise InvalidRequest(
                f"This key is limited to other collections and cannot create '{request.name}'.",
                errors=[{"field": "name", "message": "outside the key's collections"}],
            )
        async with self.db.transaction() as conn:
            if self.quotas is not None:
                await self.quotas.check_collections(conn, principal.tenant_id, request.dimension)
            await self.db.ensure_tenant_role(conn, principal.tenant_id)
            row = await store.create(
                conn,
                tenant_role=self.db.tenant_role(principal.tenant_id),
                tenant_id=principal.tenant_id,
                name=request.name,
                dimension=request.dimension,
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
        self, row: CollectionRow, vectors: list[list[float]], field: Callable[[int], str]
    ) -> Any:
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
            matrix = self._vectors_matrix(
                row, [item.vector for item in items], lambda i: f"vectors[{i}].vector"
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
        self, conn: Any, tenant_id: str, row: CollectionRow, ids: list[str], metadata_json: list[str]
    ) -> None:
        """Before writing: 403 quota_exceeded if the new ids or their estimated bytes do not fit."""
        if self.quotas is None or not (await self.quotas.limits_for(tenant_id)).has_storage_limits:
            return
        new = await store.count_new_ids(conn, row, ids)
        per_vector = row.dimension * (2 if row.storage == "float16" else 4) + 8 + _ROW_OVERHEAD
        estimate = len(ids) * per_vector + sum(len(m) for m in metadata_json) + sum(len(i) for i in ids)
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

    async def delete_vectors(self, principal: Principal, name: str, request: DeleteRequest) -> DeleteResult:
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
            compiled = compile_filter(request.filter)
            where, params = compiled.sql, compiled.params
        else:
            where, params = "id = ANY($1::text[])", [request.ids]
        async with self._in_collection(principal, name) as (conn, row):
            deleted = await store.delete_where(conn, row, where, params)
            if deleted:
                await store.record_write(conn, row.id, -deleted)
        assert principal.tenant_id is not None
        self._record(principal.tenant_id, "vectors_deleted", deleted)
        return DeleteResult(deleted=deleted)

    # -- search -----------------------------------------------------------------------------------

    def _search_settings(self, request: SearchRequest) -> dict[str, str]:
        return {
            "hnsw.ef_search": str(max(request.ef_search or self.settings.default_ef_search, request.top_k)),
            "hnsw.iterative_scan": "off",
            # asyncpg prepares statements; a generic plan would not know LIMIT $2 (nor the filter's
            # values) and would sort the whole table instead of walking the HNSW index.
            "plan_cache_mode": "force_custom_plan",
        }

    async def search(self, principal: Principal, name: str, request: SearchRequest) -> SearchResult:
        started = time.perf_counter()
        assert principal.tenant_id is not None
        await self._charge(principal.tenant_id, "search", 1)
        settings = self._search_settings(request)
        budget = _ResponseBudget(self.settings.max_search_response_bytes)
        async with self._in_collection(principal, name, settings) as (conn, row):
            hits, strategy = await self._search_one(conn, row, request, "", dict(settings), budget)
        self._record(principal.tenant_id, "searches", 1)
        await self._charge(principal.tenant_id, "search_mib", budget.mib)
        return SearchResult(
            results=hits, took_ms=round((time.perf_counter() - started) * 1000, 3), strategy=strategy
        )

    async def search_batch(
        self, principal: Principal, name: str, queries: list[SearchRequest]
    ) -> BatchSearchResult:
        started = time.perf_counter()
        assert principal.tenant_id is not None
        await self._charge(principal.tenant_id, "search", len(queries))
        results = []
        settings = self._search_settings(queries[0])
        budget = _ResponseBudget(self.settings.max_search_response_bytes)
        async with self._in_collection(principal, name, settings) as (conn, row):
            for i, query in enumerate(queries):
                hits, _ = await self._search_one(conn, row, query, f"queries[{i}].", settings, budget)
                results.append(hits)
        self._record(principal.tenant_id, "searches", len(queries))
        await self._charge(principal.tenant_id, "search_mib", budget.mib)
        return BatchSearchResult(results=results, took_ms=round((time.perf_counter() - started) * 1000, 3))

    @staticmethod
    async def _apply(conn: Any, wanted: dict[str, str], applied: dict[str, str]) -> None:
        """Set the transaction-local parameters in `wanted` that differ from `applied` (one round trip)."""
        changed = {k: v for k, v in wanted.items() if applied.get(k) != v}
        if changed:
            await set_local(conn, changed)
            applied.update(changed)

    async def _search_one(
        self,
        conn: Any,
        row: CollectionRow,
        request: SearchRequest,
        where: str,
        applied: dict[str, str],
        budget: _ResponseBudget,
    ) -> tuple[list[SearchHit], str]:
        query = self._vectors_matrix(row, [request.vector], lambda _: f"{where}vector")[0]
        strategy = await self._choose_strategy(conn, row, request)
        wanted = self._search_settings(request)
        if strategy == "hnsw_filtered":
            wanted["hnsw.iterative_scan"] = "relaxed_order"
        await self._apply(conn, wanted, applied)
        compiled = compile_filter(request.filter, first_param=3) if request.filter else None
        records = await store.nearest(
            conn,
            row,
            self._encoder(row)(query),
            top_k=request.top_k,
            where=compiled.sql if compiled else None,
            params=compiled.params if compiled else [],
            include_metadata=request.include_metadata,
            include_vector=request.include_vector,
            exact=strategy == "exact",
        )
        hits = []
        for record in records:
            score = float(record["score"])
            if request.threshold is not None and not score >= request.threshold:
                continue
            # Counted before the hit is built: a request never holds more than the limit.
            budget.add(
                len(record["id"])
                + (len(record["metadata"]) if request.include_metadata else 0)
                + (row.dimension * _JSON_BYTES_PER_FLOAT if request.include_vector else 0)
            )
            hits.append(
                SearchHit(
                    id=record["id"],
                    score=score,
                    metadata=msgspec.json.decode(record["metadata"]) if request.include_metadata else None,
                    vector=_as_list(record["embedding"]) if request.include_vector else None,
                )
            )
        return hits, strategy

    async def _choose_strategy(self, conn: Any, row: CollectionRow, request: SearchRequest) -> str:
        """exact until the HNSW index is ready; then hnsw, or for a filter: exact when it matches
        fewer than filtered_exact_scan_limit vectors (fast, perfect recall), else hnsw_filtered."""
        if row.index_status != IndexStatus.READY:
            return "exact"
        if not request.filter:
            return "hnsw"
        limit = self.settings.filtered_exact_scan_limit
        counting = compile_filter(request.filter, first_param=2)
        matches = await store.count_matches(conn, row, counting.sql, counting.params, up_to=limit)
        return "exact" if matches < limit else "hnsw_filtered"

    # -- counting (MCP's delete with dry_run) -------------------------------------------------------

    async def count_matching(self, principal: Principal, name: str, request: DeleteRequest) -> int:
        """How many vectors delete_vectors(request) would delete now, refusing what it refuses."""
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
            compiled = compile_filter(request.filter, first_param=2)
            where, params = compiled.sql, compiled.params
        else:
            # Repeated ids count once, as a delete removes each row once.
            where, params = "id = ANY($2::text[])", [request.ids]
        async with self._in_collection(principal, name) as (conn, row):
            # No cap: a dry run reports exactly what would go.
            return await store.count_matches(conn, row, where, params, up_to=2**62)
