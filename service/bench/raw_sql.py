"""The raw-SQL yardstick: the same searches and rows straight to PostgreSQL on the same database,
and the paired comparison of the API with it."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx
import numpy as np

from service.bench.api import BATCH, percentiles, search_bodies, search_connection, search_top_10

_RAW_SEARCH = "SELECT id, 1 - (embedding <=> $1) AS score FROM {table} ORDER BY embedding <=> $1 LIMIT 10"


async def _raw_connection(database_url: str, ef_search: int) -> Any:
    import asyncpg
    from pgvector.asyncpg import register_vector

    conn = await asyncpg.connect(database_url)
    await register_vector(conn)
    await conn.execute(f"SET hnsw.ef_search = {int(ef_search)}")
    return conn


async def paired(
    client: httpx.AsyncClient, name: str, database_url: str, table: str, queries: np.ndarray, ef_search: int
) -> dict[str, list[float]]:
    """Each query through the API and as raw SQL, the order alternating from query to query: a
    vector searched a second time is faster (warm buffers), so each side goes first half the time.
    -> latencies by side and by which went first."""
    conn = await _raw_connection(database_url, ef_search)
    out: dict[str, list[float]] = {
        k: [] for k in ("api", "raw", "api_first", "raw_first", "api_second", "raw_second")
    }
    connection = search_connection(client)
    await connection.__aenter__()
    try:
        statement = await conn.prepare(_RAW_SEARCH.format(table=table))
        bodies = search_bodies(queries, top_k=10)

        async def api(i: int) -> float:
            started = time.perf_counter()
            await search_top_10(connection, name, bodies[i])
            return (time.perf_counter() - started) * 1000

        async def raw(query: np.ndarray) -> float:
            started = time.perf_counter()
            await statement.fetch(query)
            return (time.perf_counter() - started) * 1000

        for i, query in enumerate(queries):
            if i % 2 == 0:
                a, r = await api(i), await raw(query)
                out["api_first"].append(a)
                out["raw_second"].append(r)
            else:
                r, a = await raw(query), await api(i)
                out["raw_first"].append(r)
                out["api_second"].append(a)
            out["api"].append(a)
            out["raw"].append(r)
    finally:
        await connection.__aexit__()
        await conn.close()
    return out


async def raw_qps(
    database_url: str, table: str, queries: np.ndarray, concurrency: int, ef_search: int
) -> float:
    """Raw SQL searches per second from `concurrency` connections of their own."""
    per_client = max(1, len(queries) // concurrency)
    conns = [await _raw_connection(database_url, ef_search) for _ in range(concurrency)]
    try:

        async def worker(conn: Any, part: np.ndarray) -> None:
            statement = await conn.prepare(_RAW_SEARCH.format(table=table))
            for query in part:
                await statement.fetch(query)

        parts = [queries[i * per_client : (i + 1) * per_client] for i in range(concurrency)]
        started = time.perf_counter()
        await asyncio.gather(*(worker(c, p) for c, p in zip(conns, parts, strict=True)))
        return (per_client * concurrency) / (time.perf_counter() - started)
    finally:
        for conn in conns:
            await conn.close()


async def raw_copy(database_url: str, data: np.ndarray) -> float:
    """Vectors per second of a raw binary COPY of the same rows (id, vector, metadata) into a
    table of the collection's shape: the yardstick for upserts through the API."""
    from pgvector import Vector

    conn = await _raw_connection(database_url, 40)
    try:
        dim = data.shape[1]
        # A regular (logged) table with the collection's own indexes, as an upsert writes to.
        await conn.execute(
            f"""CREATE TABLE bench_copy (id text PRIMARY KEY, embedding vector({dim}), metadata jsonb);
                CREATE INDEX bench_copy_metadata ON bench_copy USING gin (metadata jsonb_path_ops)"""
        )
        records = [(str(i), Vector(row), f'{{"bucket": {i % 100}}}') for i, row in enumerate(data)]
        started = time.perf_counter()
        for start in range(0, len(records), BATCH):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "bench_copy",
                    records=records[start : start + BATCH],
                    columns=["id", "embedding", "metadata"],
                )
        return len(records) / (time.perf_counter() - started)
    finally:
        await conn.execute("DROP TABLE IF EXISTS bench_copy")
        await conn.close()


async def compare_with_raw(
    client: httpx.AsyncClient,
    name: str,
    database_url: str,
    table: str,
    queries: np.ndarray,
    args: Any,
    qps_8: float,
    log: Any,
) -> dict[str, Any]:
    """The same searches as raw SQL on the same database: latency in two passes (each query's order
    alternating), and QPS at 8 clients."""
    await paired(client, name, database_url, table, queries[:20], args.ef_search)  # warm-up
    passes = [await paired(client, name, database_url, table, queries, args.ef_search) for _ in range(2)]
    ratios = [statistics.median(p["api"]) / statistics.median(p["raw"]) for p in passes]
    both = {k: [x for p in passes for x in p[k]] for k in passes[0]}
    api, raw = percentiles(both["api"]), percentiles(both["raw"])
    raw_qps_8 = await raw_qps(database_url, table, np.vstack([queries] * 4), 8, args.ef_search)
    log(
        f"raw SQL: p50 {raw['p50']:.2f} ms (API {api['p50']:.2f} ms, "
        f"ratio {min(ratios):.2f}-{max(ratios):.2f}); "
        f"QPS at 8 clients {raw_qps_8:.0f} (API {qps_8:.0f})"
    )
    return {
        "paired_api_p50_ms": round(api["p50"], 3),
        "raw_sql_p50_ms": round(raw["p50"], 3),
        "raw_sql_p99_ms": round(raw["p99"], 3),
        "api_over_raw_p50": round(api["p50"] / raw["p50"], 2),
        "api_over_raw_p50_passes": [round(r, 2) for r in ratios],
        "api_over_raw_p50_when_api_first": round(
            statistics.median(both["api_first"]) / statistics.median(both["raw_second"]), 2
        ),
        "api_over_raw_p50_when_raw_first": round(
            statistics.median(both["api_second"]) / statistics.median(both["raw_first"]), 2
        ),
        "raw_sql_qps_8": round(raw_qps_8, 1),
        "api_over_raw_qps_8": round(qps_8 / raw_qps_8, 3),
    }
