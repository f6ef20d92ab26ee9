"""SQL for the `collections` table and the DDL of each collection's own tables.

Table and index names come from the collection's numeric id (vectors_<id>), never from user text.
Reads and the write counter run in a tenant transaction (row-level security on `collections`);
DDL and work that starts from an id run on the service's login. The vector tables' own SQL is
in vector_store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from service.collections.models import IndexStatus, Metric, Storage
from service.db import ServiceConnection, TenantConnection

# (distance operator, HNSW operator class suffix, SQL turning the distance into a higher-is-better score)
METRIC_SQL: dict[Metric, tuple[str, str, str]] = {
    Metric.COSINE: ("<=>", "cosine_ops", "1 - {d}"),
    Metric.L2: ("<->", "l2_ops", "-({d})"),
    Metric.INNER_PRODUCT: ("<#>", "ip_ops", "-({d})"),
}
VECTOR_TYPE = {Storage.FLOAT32: "vector", Storage.FLOAT16: "halfvec"}


@dataclass(frozen=True, slots=True)
class CollectionRow:
    id: int
    tenant_id: str
    name: str
    dimension: int
    metric: Metric
    storage: Storage
    hnsw_m: int
    hnsw_ef_construction: int
    description: str | None
    vector_count: int
    index_status: IndexStatus
    index_error: str | None
    index_started_at: datetime | None
    index_finished_at: datetime | None
    created_at: datetime
    data_version: int = 0  # grows with every committed write to the vectors (the import cache)
    # Set for a text collection (bound to an embedding model): its chunks carry text and a document.
    embedding_model: str | None = None
    chunk_tokens: int | None = None
    chunk_overlap: int | None = None
    text_search_config: str | None = None

    @property
    def table(self) -> str:
        return f"vectors_{self.id}"

    @property
    def hnsw_index(self) -> str:
        return f"vectors_{self.id}_hnsw"

    @property
    def documents_table(self) -> str:
        return f"documents_{self.id}"

    @property
    def has_text(self) -> bool:
        return self.embedding_model is not None

    @property
    def vector_type(self) -> str:
        return VECTOR_TYPE[self.storage]

    @property
    def distance_op(self) -> str:
        return METRIC_SQL[self.metric][0]

    def score_sql(self, distance: str) -> str:
        return METRIC_SQL[self.metric][2].format(d=distance)


_COLUMNS = (
    "id, tenant_id, name, dimension, metric, storage, hnsw_m, hnsw_ef_construction, description, "
    "vector_count, index_status, index_error, index_started_at, index_finished_at, created_at, data_version, "
    "embedding_model, chunk_tokens, chunk_overlap, text_search_config"
)


def _row(record: Any) -> CollectionRow:
    values = dict(record)
    values["metric"] = Metric(values["metric"])
    values["storage"] = Storage(values["storage"])
    values["index_status"] = IndexStatus(values["index_status"])
    return CollectionRow(**values)


# -- collections (tenant context) -----------------------------------------------------------------


async def get(conn: TenantConnection, name: str) -> CollectionRow | None:
    record = await conn.fetchrow(f"SELECT {_COLUMNS} FROM collections WHERE name = $1", name)
    return _row(record) if record else None


async def get_by_id(conn: ServiceConnection, collection_id: int) -> CollectionRow | None:
    """Service context (no tenant): for background work that starts from an id (index builds, an
    import's merge)."""
    record = await conn.fetchrow(f"SELECT {_COLUMNS} FROM collections WHERE id = $1", collection_id)
    return _row(record) if record else None


async def list_page(
    conn: TenantConnection, *, after: str | None, limit: int, only: list[str] | None
) -> list[CollectionRow]:
    records = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM collections
            WHERE ($1::text IS NULL OR name > $1) AND ($2::text[] IS NULL OR name = ANY($2))
            ORDER BY name LIMIT $3""",
        after,
        only,
        limit,
    )
    return [_row(r) for r in records]


async def sizes(conn: TenantConnection | ServiceConnection, rows: list[CollectionRow]) -> dict[int, int]:
    """Bytes on disk of each collection's table, indexes and TOAST (0 if the table is gone).

    Either kind of connection: it reads sizes from the catalog for rows the caller already holds,
    never a tenant's rows (a collection is measured in the service transaction that creates it)."""
    if not rows:
        return {}
    records = await conn.fetch(
        """SELECT t.id, coalesce(pg_total_relation_size(to_regclass(t.name)), 0) AS bytes
           FROM unnest($1::bigint[], $2::text[]) AS t(id, name)""",
        [r.id for r in rows],
        [r.table for r in rows],
    )
    return {r["id"]: r["bytes"] for r in records}


async def record_write(conn: TenantConnection, collection_id: int, delta: int) -> CollectionRow:
    """Last statement of every write: counts the vectors and the write itself (data_version).

    The collection row stays locked only until the commit that follows."""
    record = await conn.fetchrow(
        f"""UPDATE collections SET vector_count = vector_count + $2, data_version = data_version + 1
            WHERE id = $1 RETURNING {_COLUMNS}""",
        collection_id,
        delta,
    )
    return _row(record)


# -- DDL (service login, inside the caller's transaction) -----------------------------------------


async def create(
    conn: ServiceConnection,
    *,
    tenant_id: str,
    name: str,
    dimension: int,
    metric: Metric,
    storage: Storage,
    m: int,
    ef_construction: int,
    description: str | None,
    tenant_role: str,
    text: TextBinding | None = None,
) -> CollectionRow | None:
    """Insert the row and create the vector table; None if the tenant already has this name."""
    try:
        record = await conn.fetchrow(
            f"""INSERT INTO collections (tenant_id, name, dimension, metric, storage, hnsw_m,
                                         hnsw_ef_construction, description, embedding_model,
                                         chunk_tokens, chunk_overlap, text_search_config)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {_COLUMNS}""",
            tenant_id,
            name,
            dimension,
            metric.value,
            storage.value,
            m,
            ef_construction,
            description,
            text.model if text else None,
            text.chunk_tokens if text else None,
            text.chunk_overlap if text else None,
            text.text_search_config if text else None,
        )
    except asyncpg.UniqueViolationError:
        return None
    row = _row(record)
    # The table belongs to one tenant: only that tenant's role may touch it. No per-row policy,
    # so the planner may use every index (row-level security would keep the GIN index from
    # serving filters, because jsonb containment is not a leakproof operator).
    await conn.execute(
        f"""
        CREATE TABLE {row.table} (
            id        text NOT NULL PRIMARY KEY,
            embedding {row.vector_type}({dimension}) NOT NULL,
            metadata  jsonb NOT NULL DEFAULT '{{}}'
        );
        CREATE INDEX {row.table}_metadata ON {row.table} USING gin (metadata jsonb_path_ops);
        GRANT SELECT, INSERT, UPDATE, DELETE ON {row.table} TO {tenant_role};
        """
    )
    if row.has_text:
        await _create_text_tables(conn, row, tenant_role)
    return row


@dataclass(frozen=True, slots=True)
class TextBinding:
    model: str
    chunk_tokens: int
    chunk_overlap: int
    text_search_config: str


async def _create_text_tables(conn: ServiceConnection, row: CollectionRow, tenant_role: str) -> None:
    """A text collection's chunks are rows of its vector table with their document, place and
    text; the keyword index is a generated tsvector with a GIN index. documents_<id> keeps each
    document whole (its text and metadata); deleting a document deletes its chunks."""
    config = row.text_search_config
    assert config is not None and config.replace("_", "").isalpha()  # checked by the service and a CHECK
    await conn.execute(
        f"""
        CREATE TABLE {row.documents_table} (
            id         text NOT NULL PRIMARY KEY,
            text       text NOT NULL,
            metadata   jsonb NOT NULL DEFAULT '{{}}',
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        ALTER TABLE {row.table}
            ADD COLUMN document_id text REFERENCES {row.documents_table} (id) ON DELETE CASCADE,
            ADD COLUMN chunk_index integer,
            ADD COLUMN char_start  integer,
            ADD COLUMN char_end    integer,
            ADD COLUMN text        text,
            ADD COLUMN tsv tsvector
                GENERATED ALWAYS AS (to_tsvector('{config}'::regconfig, coalesce(text, ''))) STORED;
        CREATE INDEX {row.table}_document ON {row.table} (document_id, chunk_index);
        CREATE INDEX {row.table}_tsv ON {row.table} USING gin (tsv);
        GRANT SELECT, INSERT, UPDATE, DELETE ON {row.documents_table} TO {tenant_role};
        """
    )


async def text_search_config_exists(conn: ServiceConnection, name: str) -> bool:
    found: bool = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_ts_config WHERE cfgname = $1)", name)
    return found


async def lock_for_drop(conn: ServiceConnection, row: CollectionRow) -> bool:
    """Before dropping: wait for the collection's running writes and lock it; False if the
    collection is gone meanwhile.

    Table first, then the row: writers lock in that order too (rows of the table, then the
    collection's counter), so the two cannot deadlock."""
    await conn.execute(f"LOCK TABLE {row.table} IN ACCESS EXCLUSIVE MODE")
    locked = await conn.fetchrow(
        "SELECT id FROM collections WHERE id = $1 AND tenant_id = $2 FOR UPDATE", row.id, row.tenant_id
    )
    return locked is not None


async def drop(conn: ServiceConnection, row: CollectionRow) -> None:
    await conn.execute(f"DROP TABLE IF EXISTS {row.table}")
    await conn.execute(f"DROP TABLE IF EXISTS {row.documents_table}")
    await conn.execute("DELETE FROM collections WHERE id = $1", row.id)


def hnsw_index_sql(row: CollectionRow) -> str:
    opclass = f"{row.vector_type}_{METRIC_SQL[row.metric][1]}"
    return (
        f"CREATE INDEX CONCURRENTLY {row.hnsw_index} ON {row.table} USING hnsw (embedding {opclass}) "
        f"WITH (m = {int(row.hnsw_m)}, ef_construction = {int(row.hnsw_ef_construction)})"
    )
