"""SQL of the semantic cache (rag_cache, migration 0006). Tenant connections only, except the
periodic prune, which runs on a service connection across tenants."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.db import ServiceConnection, TenantConnection


async def lookup(
    conn: TenantConnection,
    *,
    collection_id: int,
    data_version: int,
    cache_key: str,
    embedding: np.ndarray[Any, Any],
) -> tuple[int, float, bytes] | None:
    """The closest live entry for this collection version and key: (id, cosine similarity, answer JSON)."""
    if embedding.shape[0] == 384:
        # The form that the partial HNSW index of migration 0006 serves.
        distance = "embedding::vector(384) <=> $1::vector(384)"
        same_dimension = "dimension = 384"
    else:
        distance = "embedding <=> $1"
        same_dimension = "dimension = $5"
    params: list[Any] = [embedding, collection_id, cache_key, data_version]
    if embedding.shape[0] != 384:
        params.append(int(embedding.shape[0]))
    row = await conn.fetchrow(
        f"""SELECT id, 1 - ({distance}) AS similarity, answer::text AS answer FROM rag_cache
            WHERE collection_id = $2 AND cache_key = $3 AND data_version = $4 AND {same_dimension}
              AND expires_at > now()
            ORDER BY {distance} LIMIT 1""",
        *params,
    )
    if row is None:
        return None
    return int(row["id"]), float(row["similarity"]), row["answer"].encode()


async def record_hit(conn: TenantConnection, entry_id: int) -> None:
    await conn.execute("UPDATE rag_cache SET hits = hits + 1 WHERE id = $1", entry_id)


async def insert(
    conn: TenantConnection,
    *,
    collection_id: int,
    data_version: int,
    cache_key: str,
    embedding: np.ndarray[Any, Any],
    question: str,
    answer_json: str,
    ttl_seconds: float,
    max_entries: int,
) -> None:
    """Store an answer; drop the collection's entries of older versions, the tenant's expired
    entries, and its oldest beyond max_entries."""
    await conn.execute(
        """INSERT INTO rag_cache (collection_id, data_version, cache_key, dimension, embedding, question,
                                  answer, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, now() + make_interval(secs => $8))""",
        collection_id,
        data_version,
        cache_key,
        int(embedding.shape[0]),
        embedding,
        question,
        answer_json,
        ttl_seconds,
    )
    await conn.execute(
        "DELETE FROM rag_cache WHERE (collection_id = $1 AND data_version < $2) OR expires_at <= now()",
        collection_id,
        data_version,
    )
    await conn.execute(
        """DELETE FROM rag_cache WHERE id IN (
               SELECT id FROM rag_cache ORDER BY created_at DESC, id DESC OFFSET $1)""",
        max_entries,
    )


async def prune_and_count(conn: ServiceConnection) -> int:
    """Service connection: drop expired entries and those of versions their collection has left."""
    await conn.execute(
        """DELETE FROM rag_cache r WHERE r.expires_at <= now()
              OR r.data_version < (SELECT c.data_version FROM collections c WHERE c.id = r.collection_id)"""
    )
    count: int = await conn.fetchval("SELECT count(*) FROM rag_cache")
    return count
