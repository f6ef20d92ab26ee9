"""SQL for a text collection's documents (documents_<id>) and their chunks (rows of vectors_<id>).

Table names come from the collection's numeric id, never from user text. Everything runs in a
tenant transaction on the collection (CollectionAccess.open), as the tenant's role.
"""

from __future__ import annotations

from typing import Any

from service.collections.store import CollectionRow
from service.db import TenantConnection

CHUNK_COLUMNS = [
    "id",
    "embedding",
    "metadata",
    "document_id",
    "chunk_index",
    "char_start",
    "char_end",
    "text",
]


def chunk_id(document_id: str, index: int) -> str:
    return f"{document_id}#{index}"


async def replace(
    conn: TenantConnection,
    row: CollectionRow,
    documents: list[tuple[str, str, str]],
    chunks: list[tuple[Any, ...]],
) -> tuple[int, int]:
    """Store documents (id, text, metadata JSON) and their chunk rows (CHUNK_COLUMNS), replacing
    any earlier version with all its chunks. Returns (chunks removed, chunks added).

    The documents' rows are written first, in id order: a concurrent request for the same
    document waits there, and then sees (and deletes) the chunks this one wrote."""
    ordered = sorted(documents)
    await conn.execute(
        f"""INSERT INTO {row.documents_table} (id, text, metadata)
            SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[])
            ON CONFLICT (id) DO UPDATE SET text = EXCLUDED.text, metadata = EXCLUDED.metadata,
                                           updated_at = now()""",
        [d[0] for d in ordered],
        [d[1] for d in ordered],
        [d[2] for d in ordered],
    )
    removed: int = await conn.fetchval(
        f"""WITH gone AS (DELETE FROM {row.table} WHERE document_id = ANY($1::text[]) RETURNING 1)
            SELECT count(*) FROM gone""",
        [d[0] for d in ordered],
    )
    await conn.copy_records_to_table(row.table, records=chunks, columns=CHUNK_COLUMNS)
    return removed, len(chunks)


async def get(conn: TenantConnection, row: CollectionRow, document_id: str) -> tuple[Any, list[Any]] | None:
    document = await conn.fetchrow(
        f"SELECT id, text, metadata, updated_at FROM {row.documents_table} WHERE id = $1", document_id
    )
    if document is None:
        return None
    chunks = await conn.fetch(
        f"""SELECT id, chunk_index, char_start, char_end FROM {row.table}
            WHERE document_id = $1 ORDER BY chunk_index""",
        document_id,
    )
    return document, chunks


async def list_page(
    conn: TenantConnection, row: CollectionRow, *, after: str | None, limit: int
) -> list[Any]:
    records: list[Any] = await conn.fetch(
        f"""SELECT d.id, d.metadata, length(d.text) AS characters, d.updated_at,
                   (SELECT count(*) FROM {row.table} v WHERE v.document_id = d.id) AS chunks
            FROM {row.documents_table} d
            WHERE ($1::text IS NULL OR d.id > $1) ORDER BY d.id LIMIT $2""",
        after,
        limit,
    )
    return records


async def delete(conn: TenantConnection, row: CollectionRow, document_id: str) -> int | None:
    """Delete a document and its chunks: the number of chunks, or None if there was no document."""
    chunks: int = await conn.fetchval(
        f"""WITH gone AS (DELETE FROM {row.table} WHERE document_id = $1 RETURNING 1)
            SELECT count(*) FROM gone""",
        document_id,
    )
    found = await conn.fetchval(f"DELETE FROM {row.documents_table} WHERE id = $1 RETURNING 1", document_id)
    return chunks if found else None
