"""Vectors of a collection: upsert, read, page through, delete (by ids or a filter), count.

Also the steps every writer of a collection's vectors shares (documents write chunks through
them): the vectors' check, the storage-quota check before writing, and the write's bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
from pgvector import HalfVector, Vector

from service.auth.principal import TenantPrincipal
from service.collections import vector_store
from service.collections.access import CollectionAccess, Usage
from service.collections.filters import Condition, compile_filter, ids_condition
from service.collections.indexer import IndexBuilder
from service.collections.models import (
    DeleteRequest,
    DeleteResult,
    UpsertRequest,
    UpsertResult,
    VectorPage,
    VectorRecord,
)
from service.collections.store import CollectionRow, record_write
from service.collections.validation import CHUNK_ID_SEPARATOR, dimension_problem, first_unstorable
from service.collections.vector_codec import check_forms, items_matrix
from service.config import CollectionsSettings
from service.db import TenantConnection
from service.errors import InvalidRequest, NotFound
from service.pagination import decode_cursor, split_page

_encode_json = msgspec.json.Encoder().encode

# Bytes PostgreSQL spends per stored row besides its values (tuple header, item pointer, primary key
# and metadata index entries): part of the estimate a storage-quota check adds to what is on disk.
_ROW_OVERHEAD = 64


def problem_at(field: str, message: str, code: str | None = None) -> InvalidRequest:
    """A 400 about one field of the body, its message also in the detail."""
    return InvalidRequest.field(field, message, f"{field}: {message}", code=code)


def as_list(value: Any) -> list[float]:
    """A stored vector (pgvector's Vector/HalfVector, or a numpy array) as JSON numbers."""
    converted: list[float] = value.to_list() if hasattr(value, "to_list") else list(value)
    return converted


def encoder(row: CollectionRow) -> Callable[[Any], Any]:
    """What turns a float32 row into the value the collection's column takes."""
    return HalfVector if row.storage == "float16" else Vector


def check_vectors(row: CollectionRow, vectors: Any, field: Callable[[int], str]) -> Any:
    """The vectors (lists of numbers, or a float32 matrix from vector_codec) as a float32 matrix the
    collection can store and score; 400 naming the first vector that breaks a rule
    (service.collections.validation)."""
    if isinstance(vectors, np.ndarray):
        matrix = vectors  # decoded with the collection's dimension already
    else:
        for i, values in enumerate(vectors):
            problem = dimension_problem(len(values), row.dimension)
            if problem is not None:
                raise problem_at(field(i), problem)
        with np.errstate(over="ignore"):  # values beyond float32 become inf, refused as not finite
            matrix = np.asarray(vectors, dtype=np.float32)
    unstorable = first_unstorable(matrix, metric=row.metric, storage=row.storage)
    if unstorable is not None:
        raise problem_at(field(unstorable[0]), unstorable[1])
    return matrix


def metadata_as_json(items: list[tuple[str, Any]], what: str, max_bytes: int) -> list[str]:
    """The items' (id, metadata) rules: each id once in a request, each metadata object at most
    max_bytes of JSON (400 naming the item as `<what>[i]`). Returns the metadata as JSON."""
    seen: dict[str, int] = {}
    encoded_all: list[str] = []
    for i, (item_id, metadata) in enumerate(items):
        first = seen.setdefault(item_id, i)
        if first != i:
            raise problem_at(f"{what}[{i}].id", f"'{item_id}' repeats {what}[{first}].id")
        encoded = _encode_json(metadata or {})
        if len(encoded) > max_bytes:
            raise problem_at(f"{what}[{i}].metadata", f"{len(encoded)} bytes of JSON; at most {max_bytes}")
        encoded_all.append(encoded.decode())
    return encoded_all


def vector_not_found(name: str, vector_id: str) -> NotFound:
    return NotFound(f"Vector '{vector_id}' does not exist in collection '{name}'.")


class VectorService:
    def __init__(
        self, access: CollectionAccess, settings: CollectionsSettings, indexer: IndexBuilder, usage: Usage
    ) -> None:
        self.access = access
        self.settings = settings
        self.indexer = indexer
        self.usage = usage

    # -- what every writer of vectors does ---------------------------------------------------------

    async def check_storage(
        self,
        conn: TenantConnection,
        tenant_id: str,
        row: CollectionRow,
        ids: list[str],
        metadata_json: list[str],
        extra: int = 0,
    ) -> None:
        """Before writing: 403 quota_exceeded if the new ids or their estimated bytes (plus `extra`,
        such as documents' text) do not fit."""
        quotas = self.usage.quotas
        if quotas is None or not (await quotas.limits_for(tenant_id)).has_storage_limits:
            return
        new = await vector_store.count_new_ids(conn, row, ids)
        per_vector = row.dimension * (2 if row.storage == "float16" else 4) + 8 + _ROW_OVERHEAD
        estimate = (
            len(ids) * per_vector + sum(len(m) for m in metadata_json) + sum(len(i) for i in ids) + extra
        )
        await quotas.check_vectors(conn, tenant_id, new, estimate)

    async def charge_upsert(self, tenant_id: str, vectors: int) -> None:
        """Before the work: the tenant's upsert token bucket pays for the vectors (429 if empty)."""
        await self.usage.charge(tenant_id, "upsert", vectors)

    @staticmethod
    async def count_write(conn: TenantConnection, row: CollectionRow, delta: int) -> CollectionRow:
        """Last statement of a write to the collection: its vector count and data version."""
        return await record_write(conn, row.id, delta)

    def written(self, tenant_id: str, updated: CollectionRow, vectors: int) -> None:
        """After a committed write: meter it and consider building the index."""
        self.indexer.consider(updated)
        self.usage.record(tenant_id, "vectors_written", vectors)

    def deleted(self, tenant_id: str, vectors: int) -> None:
        self.usage.record(tenant_id, "vectors_deleted", vectors)

    # -- the vectors API ---------------------------------------------------------------------------

    async def upsert(self, principal: TenantPrincipal, name: str, request: UpsertRequest) -> UpsertResult:
        items = request.vectors
        if len(items) > self.settings.max_batch_vectors:
            raise problem_at(
                "vectors", f"{len(items)} vectors; at most {self.settings.max_batch_vectors} per request"
            )
        check_forms(items)  # before any charge: each item has vector or vector_b64
        metadata_json = metadata_as_json(
            [(item.id, item.metadata) for item in items], "vectors", self.settings.max_metadata_bytes
        )

        await self.charge_upsert(principal.tenant_id, len(items))
        async with self.access.open(principal, name) as (conn, row):
            if row.has_text:
                reserved = next((i for i, item in enumerate(items) if CHUNK_ID_SEPARATOR in item.id), None)
                if reserved is not None:
                    raise problem_at(
                        f"vectors[{reserved}].id",
                        "contains '#', which this collection keeps for its documents' chunks "
                        "(<document id>#<chunk index>); store documents through .../documents",
                    )
            matrix = check_vectors(
                row,
                items_matrix(items, row.dimension),
                lambda i: (
                    f"vectors[{i}].vector" if items[i].vector_b64 is None else f"vectors[{i}].vector_b64"
                ),
            )
            await self.check_storage(conn, principal.tenant_id, row, [i.id for i in items], metadata_json)
            encode = encoder(row)
            inserted = await vector_store.upsert(
                conn, row, [(item.id, encode(matrix[i]), metadata_json[i]) for i, item in enumerate(items)]
            )
            updated = await record_write(conn, row.id, inserted)
        self.written(principal.tenant_id, updated, len(items))
        return UpsertResult(upserted=len(items))

    async def get(self, principal: TenantPrincipal, name: str, vector_id: str) -> VectorRecord:
        async with self.access.open(principal, name) as (conn, row):
            record = await vector_store.get_vector(conn, row, vector_id)
        if record is None:
            raise vector_not_found(name, vector_id)
        return VectorRecord(
            id=record["id"],
            metadata=msgspec.json.decode(record["metadata"]),
            vector=as_list(record["embedding"]),
        )

    async def scroll(
        self, principal: TenantPrincipal, name: str, *, cursor: str | None, limit: int, include_vector: bool
    ) -> VectorPage:
        async with self.access.open(principal, name) as (conn, row):
            records = await vector_store.scroll(
                conn, row, after=decode_cursor(cursor), limit=limit + 1, include_vector=include_vector
            )
        records, next_cursor = split_page(records, limit, lambda r: str(r["id"]))
        items = [
            VectorRecord(
                id=r["id"],
                metadata=msgspec.json.decode(r["metadata"]),
                vector=as_list(r["embedding"]) if include_vector else None,
            )
            for r in records
        ]
        return VectorPage(items=items, next_cursor=next_cursor)

    async def delete_one(self, principal: TenantPrincipal, name: str, vector_id: str) -> None:
        result = await self.delete(principal, name, DeleteRequest(ids=[vector_id]))
        if result.deleted == 0:
            raise vector_not_found(name, vector_id)

    @staticmethod
    def _deletion(request: DeleteRequest) -> Condition:
        """The rows a delete request names (400 for a request that gives both or neither of ids
        and filter, or an empty filter)."""
        if (request.ids is None) == (request.filter is None):
            raise InvalidRequest.field(
                "ids", "exactly one of ids and filter", "Give exactly one of 'ids' and 'filter'."
            )
        if request.filter == {}:
            raise InvalidRequest.field(
                "filter",
                "empty",
                "An empty filter would delete every vector; give ids or conditions, "
                "or delete the collection.",
            )
        if request.filter is not None:
            return compile_filter(request.filter)
        assert request.ids is not None
        return ids_condition(request.ids)

    async def delete(self, principal: TenantPrincipal, name: str, request: DeleteRequest) -> DeleteResult:
        where = self._deletion(request)
        async with self.access.open(principal, name) as (conn, row):
            deleted = await vector_store.delete_where(conn, row, where)
            if deleted:
                if row.has_text:
                    await vector_store.drop_documents_without_chunks(conn, row)
                await record_write(conn, row.id, -deleted)
        self.deleted(principal.tenant_id, deleted)
        return DeleteResult(deleted=deleted)

    async def count_matching(self, principal: TenantPrincipal, name: str, request: DeleteRequest) -> int:
        """How many vectors delete(request) would delete now, refusing what it refuses (MCP's
        delete with dry_run)."""
        where = self._deletion(request)
        async with self.access.open(principal, name) as (conn, row):
            # No cap: a dry run reports exactly what would go.
            return await vector_store.count_matches(conn, row, where, up_to=2**62)
