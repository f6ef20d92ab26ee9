"""SQL on a collection's vector table (vectors_<id>): writes, reads, deletes and the searches.

Table names come from the collection's numeric id, never from user text; everything runs in a
tenant transaction, as the tenant's own role (the only role granted the table). Conditions from
the filter compiler arrive as `Condition`s and are bound after the query's own parameters.
"""

from __future__ import annotations

from typing import Any

from service.collections.filters import Condition
from service.collections.store import CollectionRow
from service.db import TenantConnection


async def count_new_ids(conn: TenantConnection, row: CollectionRow, ids: list[str]) -> int:
    """How many of these ids the collection does not hold yet (what an upsert would add)."""
    count: int = await conn.fetchval(
        f"""SELECT count(*) FROM unnest($1::text[]) AS u(id)
            WHERE NOT EXISTS (SELECT 1 FROM {row.table} v WHERE v.id = u.id)""",
        ids,
    )
    return count


async def upsert(conn: TenantConnection, row: CollectionRow, records: list[tuple[str, Any, str]]) -> int:
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


async def get_vector(conn: TenantConnection, row: CollectionRow, vector_id: str) -> Any:
    return await conn.fetchrow(f"SELECT id, embedding, metadata FROM {row.table} WHERE id = $1", vector_id)


async def scroll(
    conn: TenantConnection, row: CollectionRow, *, after: str | None, limit: int, include_vector: bool
) -> list[Any]:
    columns = "id, metadata, embedding" if include_vector else "id, metadata"
    records: list[Any] = await conn.fetch(
        f"SELECT {columns} FROM {row.table} WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2",
        after,
        limit,
    )
    return records


async def delete_where(conn: TenantConnection, row: CollectionRow, where: Condition) -> int:
    params: list[Any] = []
    condition = where.bind(params)
    deleted: int = await conn.fetchval(
        f"WITH gone AS (DELETE FROM {row.table} WHERE {condition} RETURNING 1) SELECT count(*) FROM gone",
        *params,
    )
    return deleted


async def drop_documents_without_chunks(conn: TenantConnection, row: CollectionRow) -> None:
    """After chunks were deleted as vectors: documents left with none are gone too."""
    await conn.execute(
        f"""DELETE FROM {row.documents_table} d
            WHERE NOT EXISTS (SELECT 1 FROM {row.table} v WHERE v.document_id = d.id)"""
    )


async def count_matches(conn: TenantConnection, row: CollectionRow, where: Condition, *, up_to: int) -> int:
    """Vectors matching the condition, counted up to `up_to`."""
    params: list[Any] = [up_to]
    condition = where.bind(params)
    count: int = await conn.fetchval(
        f"SELECT count(*) FROM (SELECT 1 FROM {row.table} WHERE {condition} LIMIT $1) s", *params
    )
    return count


async def nearest(
    conn: TenantConnection,
    row: CollectionRow,
    query: Any,
    *,
    top_k: int,
    where: Condition | None,
    include_metadata: bool,
    include_vector: bool,
    exact: bool,
) -> list[Any]:
    """The top_k nearest vectors (those matching `where`) with a higher-is-better score.

    exact: order by an expression no index can produce (distance + 0), so the planner scans
    (through the GIN index when the filter allows) instead of walking the approximate HNSW graph.
    """
    distance = f"embedding {row.distance_op} $1::{row.vector_type}"
    order = f"({distance}) + 0" if exact else distance
    columns = _hit_columns(
        f"{row.score_sql('distance')} AS score", row.has_text, include_metadata, include_vector
    )
    params: list[Any] = [query, top_k]
    condition = where.bind(params) if where is not None else "TRUE"
    # With iterative scans (relaxed_order) neighbours may come slightly out of order:
    # materialise the candidates, then sort them exactly.
    records: list[Any] = await conn.fetch(
        f"""WITH nearest AS MATERIALIZED (
                SELECT {", ".join(("id", "metadata", "embedding", *_TEXT_COLUMNS[row.has_text]))},
                       {distance} AS distance FROM {row.table}
                WHERE {condition}
                ORDER BY {order} LIMIT $2)
            SELECT {", ".join(columns)} FROM nearest ORDER BY distance""",
        *params,
    )
    return records


# A text collection's hits say which chunk of which document they are, and carry its text.
_TEXT_COLUMNS = {True: ("document_id", "chunk_index", "text"), False: ()}


def _hit_columns(score: str, has_text: bool, include_metadata: bool, include_vector: bool) -> list[str]:
    """What a search returns per hit: id, score, the chunk's place and text, and what was asked."""
    columns = ["id", score, *_TEXT_COLUMNS[has_text]]
    if include_metadata:
        columns.append("metadata")
    if include_vector:
        columns.append("embedding")
    return columns


async def keyword_ranked(
    conn: TenantConnection,
    row: CollectionRow,
    text: str,
    *,
    top_k: int,
    where: Condition | None,
    include_metadata: bool,
    include_vector: bool,
) -> list[Any]:
    """Chunks matching the query text (websearch_to_tsquery in the collection's text search
    configuration) and `where`, best ts_rank_cd first."""
    columns = _hit_columns("ts_rank_cd(tsv, q) AS score", True, include_metadata, include_vector)
    params: list[Any] = [text, top_k]
    condition = where.bind(params) if where is not None else "TRUE"
    records: list[Any] = await conn.fetch(
        f"""SELECT {", ".join(columns)}
            FROM {row.table}, websearch_to_tsquery('{row.text_search_config}'::regconfig, $1) AS q
            WHERE tsv @@ q AND {condition}
            ORDER BY score DESC, id LIMIT $2""",
        *params,
    )
    return records
