"""SQL on the imports table (migration 0003) and the import's staging table.

Tenant-facing reads run in a tenant transaction (row-level security limits them to the tenant's
rows); the runner's bookkeeping runs as the service login and always names the import's id.
The statuses in the SQL are written from the one definition in models.py (ACTIVE and the
ImportStatus values) as literals, not parameters, so that the partial indexes on `status`
(imports_active, imports_cache) still match.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.db import ServiceConnection, TenantConnection
from service.imports.models import ACTIVE, ImportStatus


def _literal(status: ImportStatus) -> str:
    return f"'{status.value}'"  # an enum's own value: plain lowercase words


_IS_ACTIVE = f"status IN ({', '.join(_literal(s) for s in ACTIVE)})"
_PENDING, _LOADING, _LOADED = (
    _literal(s) for s in (ImportStatus.PENDING, ImportStatus.LOADING, ImportStatus.LOADED)
)
_ERROR, _CANCELLED = _literal(ImportStatus.ERROR), _literal(ImportStatus.CANCELLED)

_COLUMNS = (
    "id, tenant_id, collection, collection_id, source, manifest_path, user_address, create_collection, "
    "status, runner, chunks_done, chunks_total, vectors_loaded, manifest_fingerprint, collection_version, "
    "cached, error_code, error_message, created_at, started_at, finished_at"
)


@dataclass(frozen=True, slots=True)
class ImportRow:
    id: uuid.UUID
    tenant_id: str
    collection: str
    collection_id: int | None
    source: str
    manifest_path: str
    user_address: str
    create_collection: bool
    status: ImportStatus
    runner: int | None
    chunks_done: int
    chunks_total: int | None
    vectors_loaded: int
    manifest_fingerprint: str | None
    collection_version: int | None
    cached: bool
    error_code: str | None
    error_message: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def _row(record: Any) -> ImportRow:
    fields = dict(record)
    return ImportRow(**{**fields, "status": ImportStatus(fields["status"])})


async def insert(
    conn: TenantConnection,
    *,
    tenant_id: str,
    collection: str,
    collection_id: int | None,
    manifest_path: str,
    user_address: str,
    create_collection: bool,
    runner: int,
) -> ImportRow:
    record = await conn.fetchrow(
        f"""INSERT INTO imports (id, tenant_id, collection, collection_id, source, manifest_path,
                                 user_address, create_collection, runner)
            VALUES ($1, $2, $3, $4, 's5', $5, $6, $7, $8) RETURNING {_COLUMNS}""",
        uuid.uuid4(),
        tenant_id,
        collection,
        collection_id,
        manifest_path,
        user_address,
        create_collection,
        runner,
    )
    return _row(record)


async def count_active(conn: TenantConnection, tenant_id: str) -> int:
    count: int = await conn.fetchval(
        f"SELECT count(*) FROM imports WHERE tenant_id = $1 AND {_IS_ACTIVE}", tenant_id
    )
    return count


async def get(conn: TenantConnection, import_id: uuid.UUID) -> ImportRow | None:
    record = await conn.fetchrow(f"SELECT {_COLUMNS} FROM imports WHERE id = $1", import_id)
    return _row(record) if record else None


async def list_page(
    conn: TenantConnection, *, after: tuple[datetime, uuid.UUID] | None, limit: int, only: list[str] | None
) -> list[ImportRow]:
    """Newest first; `only` limits to these collection names (a collection-scoped key)."""
    records = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM imports
            WHERE ($1::timestamptz IS NULL OR (created_at, id) < ($1, $2))
              AND ($3::text[] IS NULL OR collection = ANY($3))
            ORDER BY created_at DESC, id DESC LIMIT $4""",
        after[0] if after else None,
        after[1] if after else None,
        only,
        limit,
    )
    return [_row(r) for r in records]


async def cancel(conn: TenantConnection, import_id: uuid.UUID) -> ImportRow | None:
    """Cancel if still active; None when the import had already ended (or does not exist)."""
    record = await conn.fetchrow(
        f"""UPDATE imports SET status = {_CANCELLED}, error_code = 'cancelled',
                   error_message = 'cancelled by request', finished_at = now()
            WHERE id = $1 AND {_IS_ACTIVE} RETURNING {_COLUMNS}""",
        import_id,
    )
    return _row(record) if record else None


# -- the runner (service login) -------------------------------------------------------------------


async def claim(conn: ServiceConnection, import_id: uuid.UUID, runner: int) -> ImportRow | None:
    """pending -> loading; None if it was cancelled (or swept) before it could start."""
    record = await conn.fetchrow(
        f"""UPDATE imports SET status = {_LOADING}, started_at = now(), runner = $2
            WHERE id = $1 AND status = {_PENDING} RETURNING {_COLUMNS}""",
        import_id,
        runner,
    )
    return _row(record) if record else None


async def progress(
    conn: ServiceConnection,
    import_id: uuid.UUID,
    *,
    chunks_done: int,
    chunks_total: int | None,
    vectors_loaded: int,
    fingerprint: str | None = None,
) -> bool:
    """Record progress; False when the import is no longer loading (cancelled meanwhile)."""
    status = await conn.fetchval(
        f"""UPDATE imports SET chunks_done = $2, chunks_total = $3, vectors_loaded = $4,
                  manifest_fingerprint = coalesce($5, manifest_fingerprint)
           WHERE id = $1 AND status = {_LOADING} RETURNING status""",
        import_id,
        chunks_done,
        chunks_total,
        vectors_loaded,
        fingerprint,
    )
    return status is not None


async def finish_loaded(
    conn: TenantConnection,
    import_id: uuid.UUID,
    *,
    collection_id: int,
    collection_version: int,
    vectors_loaded: int,
    chunks_total: int,
    cached: bool,
) -> bool:
    """loading -> loaded, inside the transaction that committed the vectors; False if cancelled."""
    status = await conn.fetchval(
        f"""UPDATE imports SET status = {_LOADED}, finished_at = clock_timestamp(), collection_id = $2,
                  collection_version = $3, vectors_loaded = $4, chunks_done = $5, chunks_total = $5,
                  cached = $6
           WHERE id = $1 AND status = {_LOADING} RETURNING status""",
        import_id,
        collection_id,
        collection_version,
        vectors_loaded,
        chunks_total,
        cached,
    )
    return status is not None


async def finish_failed(conn: ServiceConnection, import_id: uuid.UUID, code: str, message: str) -> None:
    await conn.execute(
        f"""UPDATE imports SET status = {_ERROR}, error_code = $2, error_message = $3, finished_at = now()
           WHERE id = $1 AND {_IS_ACTIVE}""",
        import_id,
        code,
        message,
    )


async def cached_result(
    conn: TenantConnection,
    *,
    collection_id: int,
    manifest_path: str,
    user_address: str,
    fingerprint: str,
    version: int,
) -> int | None:
    """Vectors of an earlier import of this same manifest whose merge left the collection at `version`."""
    loaded: int | None = await conn.fetchval(
        f"""SELECT vectors_loaded FROM imports
           WHERE status = {_LOADED} AND collection_id = $1 AND manifest_path = $2
             AND lower(user_address) = lower($3) AND manifest_fingerprint = $4 AND collection_version = $5
           ORDER BY finished_at DESC LIMIT 1""",
        collection_id,
        manifest_path,
        user_address,
        fingerprint,
        version,
    )
    return loaded


async def locked_data_version(conn: TenantConnection, collection_id: int) -> int | None:
    """The collection's data version, its row locked against writes until the transaction ends."""
    version: int | None = await conn.fetchval(
        "SELECT data_version FROM collections WHERE id = $1 FOR SHARE", collection_id
    )
    return version


async def collection_id(conn: ServiceConnection, tenant_id: str, name: str) -> int | None:
    """The id of the tenant's collection of that name (the merge's look-up, as the service login)."""
    found: int | None = await conn.fetchval(
        "SELECT id FROM collections WHERE tenant_id = $1 AND name = $2", tenant_id, name
    )
    return found


async def interrupt_runner(conn: ServiceConnection, runner: int) -> None:
    """End the active imports of this runner (its process is shutting down)."""
    await conn.execute(
        f"""UPDATE imports SET status = {_ERROR}, error_code = 'interrupted', finished_at = now(),
                  error_message = 'the server shut down before the import finished; nothing was '
                                  || 'written; submit the import again'
           WHERE runner = $1 AND {_IS_ACTIVE}""",
        runner,
    )


async def sweep_orphans(conn: ServiceConnection, lease_class: int) -> list[uuid.UUID]:
    """End as error every active import whose runner no longer holds its lease (its process died).

    A runner holds pg_advisory_lock(lease_class, runner) on a connection of its own for as long as
    it lives; PostgreSQL releases it when that connection ends, however the process ended.
    """
    records = await conn.fetch(
        f"""UPDATE imports SET status = {_ERROR}, error_code = 'interrupted', finished_at = now(),
                  error_message = 'the server running this import stopped before it finished; '
                                  || 'nothing was written; submit the import again'
           WHERE {_IS_ACTIVE}
             AND NOT EXISTS (
                 SELECT 1 FROM pg_locks l
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                   AND l.classid = $1::int8::oid AND l.objid = imports.runner::int8::oid)
           RETURNING id""",
        lease_class,
    )
    return [r["id"] for r in records]


# -- the staging table (the import's own connection) ----------------------------------------------


async def create_staging(
    conn: ServiceConnection, *, vector_type: str, dimension: int, tenant_role: str
) -> None:
    """A temporary table of the import's own session: it vanishes with the session, crash or not."""
    await conn.execute(
        f"""CREATE TEMP TABLE vh_import (ord bigint NOT NULL, id text NOT NULL,
                                         embedding {vector_type}({int(dimension)}) NOT NULL,
                                         metadata jsonb NOT NULL);
            GRANT SELECT ON vh_import TO {tenant_role}"""
    )


async def copy_chunk(conn: ServiceConnection, copy_data: bytes) -> None:
    async def pieces() -> AsyncIterator[bytes]:  # asyncpg would read a bytes source as a file name
        view = memoryview(copy_data)
        for start in range(0, len(view), 1 << 20):
            yield bytes(view[start : start + (1 << 20)])

    await conn.copy_to_table(
        "vh_import", source=pieces(), columns=["ord", "id", "embedding", "metadata"], format="binary"
    )


async def staged_additions(conn: TenantConnection, table: str) -> tuple[int, int]:
    """(distinct staged ids the collection does not hold yet, bytes of the staged rows): what the
    merge would add, for the storage quota, known before anything is written."""
    record = await conn.fetchrow(
        f"""SELECT (SELECT count(DISTINCT s.id) FROM vh_import s
                    WHERE NOT EXISTS (SELECT 1 FROM {table} v WHERE v.id = s.id)) AS new_ids,
                   pg_relation_size('pg_temp.vh_import') AS bytes"""
    )
    return record["new_ids"], record["bytes"]


async def merge_staged(conn: TenantConnection, table: str, *, plain_insert: bool = False) -> tuple[int, int]:
    """Into the collection's table, the later of repeated ids winning, in id order (the lock order
    of upserts, so that a concurrent upsert waits rather than deadlocks). -> (rows, new ids).

    plain_insert: the staged ids are distinct and the table is empty and visible to no one else
    (created by this transaction): a plain INSERT, without the sort of every staged row (for
    100,000 x 384 that sort spills ~170 MB to disk) and without conflict checks."""
    if plain_insert:
        status: str = await conn.execute(
            f"INSERT INTO {table} (id, embedding, metadata) SELECT id, embedding, metadata FROM vh_import"
        )
        rows = int(status.rsplit(" ", 1)[1])
        return rows, rows
    record = await conn.fetchrow(
        f"""WITH merged AS (
                INSERT INTO {table} (id, embedding, metadata)
                SELECT DISTINCT ON (id) id, embedding, metadata FROM vh_import ORDER BY id, ord DESC
                ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, metadata = EXCLUDED.metadata
                RETURNING (xmax = 0) AS inserted)
            SELECT count(*) AS total, count(*) FILTER (WHERE inserted) AS inserted FROM merged"""
    )
    return record["total"], record["inserted"]


async def staged_chunk_like_ids(conn: TenantConnection) -> bool:
    """Whether a staged id contains '#', the mark of a document chunk in text collections."""
    found: bool = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM vh_import WHERE strpos(id, '#') > 0)")
    return found
