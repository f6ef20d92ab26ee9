"""SQL for collections and their vector tables.

Table and index names come from the collection's numeric id (vectors_<id>), never from user text.
Everything except DDL runs inside Database.tenant_transaction, under row-level security.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from service.collections.models import IndexStatus, Metric, Storage

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


async def get(conn: Any, name: str) -> CollectionRow | None:
    record = await conn.fetchrow(f"SELECT {_COLUMNS} FROM collections WHERE name = $1", name)
    return _row(record) if record else None


async def get_by_id(conn: Any, collection_id: int) -> CollectionRow | None:
    """Service context (no tenant): for background work that starts from an id."""
    record = await conn.fetchrow(f"SELECT {_COLUMNS} FROM collections WHERE id = $1", collection_id)
    return _row(record) if record else None


async def list_page(
    conn: Any, *, after: str | None, limit: int, only: list[str] | None
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


async def sizes(conn: Any, rows: list[CollectionRow]) -> dict[int, int]:
    """Bytes on disk of each collection's table, indexes and TOAST (0 if the table is gone)."""
    if not rows:
        return {}
    records = await conn.fetch(
        """SELECT t.id, coalesce(pg_total_relation_size(to_regclass(t.name)), 0) AS bytes
           FROM unnest($1::bigint[], $2::text[]) AS t(id, name)""",
        [r.id for r in rows],
        [r.table for r in rows],
    )
    return {r["id"]: r["bytes"] for r in records}


async def count_new_ids(conn: Any, row: CollectionRow, ids: list[str]) -> int:
    """How many of these ids the collection does not hold yet (what an upsert would add)."""
    count: int = await conn.fetchval(
        f"""SELECT count(*) FROM unnest($1::text[]) AS u(id)
            WHERE NOT EXISTS (SELECT 1 FROM {row.table} v WHERE v.id = u.id)""",
        ids,
    )
    return count


async def record_write(conn: Any, collection_id: int, delta: int) -> CollectionRow:
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
    conn: Any,
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


async def _create_text_tables(conn: Any, row: CollectionRow, tenant_role: str) -> None:
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


async def text_search_config_exists(conn: Any, name: str) -> bool:
    found: bool = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_ts_config WHERE cfgname = $1)", name)
    return found


async def drop(conn: Any, row: CollectionRow) -> None:
    await conn.execute(f"DROP TABLE IF EXISTS {row.table}")
    await conn.execute(f"DROP TABLE IF EXISTS {row.documents_table}")
    await conn.execute("DELETE FROM collections WHERE id = $1", row.id)


def hnsw_index_sql(row: CollectionRow) -> str:
    opclass = f"{row.vector_type}_{METRIC_SQL[row.metric][1]}"
    return (
        f"CREATE INDEX CONCURRENTLY {row.hnsw_index} ON {row.table} USING hnsw (embedding {opclass}) "
        f"WITH (m = {int(row.hnsw_m)}, ef_construction = {int(row.hnsw_ef_construction)})"
    )


# -- vectors (tenant context) ---------------------------------------------------------------------


async def upsert(conn: Any, row: CollectionRow, records: list[tuple[str, Any, str]]) -> int:
    """Binary COPY into a staging table, then merge; returns how many ids were new.

    The merge takes row locks in id order, so that concurrent batches with overlapping ids wait
    for each other instead of deadlocking.
    """
    # Per-connection temporary table, emptied at every commit (see db.database._STAGING_TABLES).
    staging = f"vh_staging_{row.vector_type}"
    await conn.copy_records_to_table(staging, records=records, columns=["id", "embedding", "metadata"])
    inserted: int = await conn.fetchval(
        f"""WITH merged AS (
                INSERT INTO {row.table} (id, embedding, metadata)
                SELECT id, embedding, metadata FROM {staging} ORDER BY id
                ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, metadata = EXCLUDED.metadata
                RETURNING (xmax = 0) AS inserted)
            SELECT count(*) FILTER (WHERE inserted) FROM merged"""
    )
    return inserted


async def get_vector(conn: Any, row: CollectionRow, vector_id: str) -> Any:
    return await conn.fetchrow(f"SELECT id, embedding, metadata FROM {row.table} WHERE id = $1", vector_id)


async def scroll(
    conn: Any, row: CollectionRow, *, after: str | None, limit: int, include_vector: bool
) -> list[Any]:
    columns = "id, metadata, embedding" if include_vector else "id, metadata"
    records: list[Any] = await conn.fetch(
        f"SELECT {columns} FROM {row.table} WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2",
        after,
        limit,
    )
    return records


async def delete_where(conn: Any, row: CollectionRow, where: str, params: list[Any]) -> int:
    """where: SQL from the filter compiler (or fixed text) whose values are all in params."""
    deleted: int = await conn.fetchval(
        f"WITH gone AS (DELETE FROM {row.table} WHERE {where} RETURNING 1) SELECT count(*) FROM gone", *params
    )
    return deleted


async def drop_documents_without_chunks(conn: Any, row: CollectionRow) -> None:
    """After chunks were deleted as vectors: documents left with none are gone too."""
    await conn.execute(
        f"""DELETE FROM {row.documents_table} d
            WHERE NOT EXISTS (SELECT 1 FROM {row.table} v WHERE v.document_id = d.id)"""
    )


async def count_matches(conn: Any, row: CollectionRow, where: str, params: list[Any], *, up_to: int) -> int:
    """Vectors matching a compiled filter whose parameters start at $2, counted up to `up_to`."""
    count: int = await conn.fetchval(
        f"SELECT count(*) FROM (SELECT 1 FROM {row.table} WHERE {where} LIMIT $1) s", up_to, *params
    )
    return count


async def nearest(
    conn: Any,
    row: CollectionRow,
    query: Any,
    *,
    top_k: int,
    where: str | None,
    params: list[Any],
    include_metadata: bool,
    include_vector: bool,
    exact: bool,
) -> list[Any]:
    """The top_k nearest vectors with a higher-is-better score; filter parameters start at $3.

    exact: order by an expression no index can produce (distance + 0), so the planner scans
    (through the GIN index when the filter allows) instead of walking the approximate HNSW graph.
    """
    distance = f"embedding {row.distance_op} $1::{row.vector_type}"
    order = f"({distance}) + 0" if exact else distance
    columns = ["id", f"{row.score_sql('distance')} AS score", *_TEXT_COLUMNS[row.has_text]]
    if include_metadata:
        columns.append("metadata")
    if include_vector:
        columns.append("embedding")
    # With iterative scans (relaxed_order) neighbours may come slightly out of order:
    # materialise the candidates, then sort them exactly.
    records: list[Any] = await conn.fetch(
        f"""WITH nearest AS MATERIALIZED (
                SELECT {", ".join(("id", "metadata", "embedding", *_TEXT_COLUMNS[row.has_text]))},
                       {distance} AS distance FROM {row.table}
                WHERE {where or "TRUE"}
                ORDER BY {order} LIMIT $2)
            SELECT {", ".join(columns)} FROM nearest ORDER BY distance""",
        query,
        top_k,
        *params,
    )
    return records


# A text collection's hits say which chunk of which document they are, and carry its text.
_TEXT_COLUMNS = {True: ("document_id", "chunk_index", "text"), False: ()}


async def keyword_ranked(
    conn: Any,
    row: CollectionRow,
    text: str,
    *,
    top_k: int,
    where: str | None,
    params: list[Any],
    include_metadata: bool,
    include_vector: bool,
) -> list[Any]:
    """Chunks matching the query text (websearch_to_tsquery in the collection's text search
    configuration), best ts_rank_cd first; filter parameters start at $3."""
    columns = ["id", "ts_rank_cd(tsv, q) AS score", *_TEXT_COLUMNS[True]]
    if include_metadata:
        columns.append("metadata")
    if include_vector:
        columns.append("embedding")
    records: list[Any] = await conn.fetch(
        f"""SELECT {", ".join(columns)}
            FROM {row.table}, websearch_to_tsquery('{row.text_search_config}'::regconfig, $1) AS q
            WHERE tsv @@ q AND {where or "TRUE"}
            ORDER BY score DESC, id LIMIT $2""",
        text,
        top_k,
        *params,
    )
    return records
