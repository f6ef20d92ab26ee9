"""vectorhive bench: the run (the data, the phases in order, the result) and its output.

Phases: bulk upsert into a fresh collection (no HNSW index yet), the background index build,
single-client latency and recall@10 against exact search (numpy, on the same vectors), QPS at 1
and 8 concurrent clients, the same searches as raw SQL on the same database, a filtered search
at 1% selectivity, and upserts into the now indexed collection.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import httpx
import numpy as np

from service.bench.api import BATCH, UPLOAD_STREAMS, percentiles, qps, recall_at_10, search_latencies, upload
from service.bench.raw_sql import compare_with_raw, raw_copy
from service.bench.target import Target, start_temporary_server

INDEXED_UPSERT_VECTORS = 10_000


def make_data(kind: str, n: int, dim: int, seed: int) -> tuple[np.ndarray, str]:
    """Vectors that look like real embeddings unless told otherwise; also returns a description."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        data = rng.uniform(-1, 1, size=(n, dim)).astype(np.float32)
        description = f"uniform random in [-1, 1]^{dim} (HNSW's hard case)"
    elif kind == "clustered":
        # Real embeddings have low intrinsic dimension and topic clusters: a Gaussian mixture in a
        # small latent space, mapped linearly into `dim` dimensions, plus a little isotropic noise.
        latent_dim, clusters = 24, 200
        centers = rng.normal(size=(clusters, latent_dim))
        latent = centers[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, latent_dim))
        projection = rng.normal(size=(latent_dim, dim)) / np.sqrt(latent_dim)
        data = (latent @ projection + 0.05 * rng.normal(size=(n, dim))).astype(np.float32)
        description = (
            f"clustered: {clusters}-component Gaussian mixture in a {latent_dim}-d latent space, "
            f"projected to {dim}-d with noise"
        )
    else:
        loaded = np.load(kind, mmap_mode="r")
        if loaded.ndim != 2:
            raise SystemExit(f"--data {kind}: expected a 2-d array of vectors, got shape {loaded.shape}")
        data = np.array(loaded[:n], dtype=np.float32)
        description = f"file {kind} ({data.shape[0]} x {data.shape[1]})"
    data /= np.linalg.norm(data, axis=1, keepdims=True) + 1e-12
    return data, description


async def run(target: Target, args: Any, log: Any) -> dict[str, Any]:
    # One draw for everything, so that queries and later upserts come from the same distribution
    # (same clusters, same projection) as the loaded vectors, as real queries would.
    wanted = args.vectors + args.queries + INDEXED_UPSERT_VECTORS
    everything, description = make_data(args.data, wanted, args.dim, seed=1)
    if len(everything) < wanted:
        # A file with too few rows: queries and later upserts are perturbed copies of its vectors.
        rng = np.random.default_rng(2)
        picks = everything[rng.integers(0, len(everything), wanted - len(everything))]
        noisy = picks + 0.05 * rng.normal(size=picks.shape).astype(np.float32) / np.sqrt(picks.shape[1])
        everything = np.vstack([everything, noisy / np.linalg.norm(noisy, axis=1, keepdims=True)])
    n = min(args.vectors, len(everything) - args.queries - INDEXED_UPSERT_VECTORS)
    data = everything[:n]
    queries = everything[n : n + args.queries]
    extra = everything[n + args.queries : n + args.queries + INDEXED_UPSERT_VECTORS]
    dim = data.shape[1]
    log(f"data: {description}; {n} x {dim}, {len(queries)} queries")

    name = f"bench-{int(time.time())}"
    headers = {"Authorization": f"Bearer {target.key}"}
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(base_url=target.url, headers=headers, timeout=600, limits=limits) as client:
        made = await client.post(
            "/api/v1/collections", json={"name": name, "dimension": dim, "metric": "cosine"}
        )
        if made.status_code != 201:
            raise SystemExit(f"could not create the collection: {made.status_code} {made.text[:500]}")
        try:
            b64_rate = None
            if args.encoding == "both":
                # The same vectors as base64 first, into a scratch collection dropped at once (before
                # its index build would compete with the main load).
                scratch = f"{name}-b64"
                made = await client.post(
                    "/api/v1/collections", json={"name": scratch, "dimension": dim, "metric": "cosine"}
                )
                if made.status_code != 201:
                    raise SystemExit(f"could not create the collection: {made.status_code} {made.text[:500]}")
                try:
                    log(f"uploading {n} vectors as base64 (vector_b64) into a scratch collection ...")
                    b64_rate = await upload(client, scratch, data, 0, metadata=True, encoding="base64")
                    log(f"  {b64_rate:,.0f} vectors/s")
                finally:
                    await client.delete(f"/api/v1/collections/{scratch}")
            encoding = "base64" if args.encoding == "base64" else "json"
            log(
                f"uploading {n} vectors ({encoding}) in batches of {BATCH} "
                f"over {UPLOAD_STREAMS} connections ..."
            )
            upsert_rate = await upload(client, name, data, 0, metadata=True, encoding=encoding)
            log(f"  {upsert_rate:,.0f} vectors/s")

            build_s: float | None = None
            state = (await client.get(f"/api/v1/collections/{name}")).json()["index"]
            if state["status"] == "none" and n < state["build_threshold"]:
                # The server builds no index below its threshold (collections.index_threshold):
                # waiting for one would wait for ever. Searches then scan exactly.
                log(f"no HNSW index below {state['build_threshold']:,} vectors: searches scan exactly")
            else:
                log("waiting for the HNSW index ...")
                waited = time.perf_counter()
                while state["status"] not in ("ready", "failed"):
                    await asyncio.sleep(0.5)
                    state = (await client.get(f"/api/v1/collections/{name}")).json()["index"]
                if state["status"] != "ready":
                    raise SystemExit(f"index build failed: {state['error']}")
                build_s = float(
                    (
                        np.datetime64(state["finished_at"].rstrip("Z"))
                        - np.datetime64(state["started_at"].rstrip("Z"))
                    )
                    / np.timedelta64(1, "s")
                )
                log(f"  built in {build_s:.1f} s (waited {time.perf_counter() - waited:.1f} s)")

            truth = [list(np.argsort(-(data @ q))[:10]) for q in queries]
            await search_latencies(client, name, queries[:20], {"top_k": 10})  # warm-up
            latencies, found, strategies = await search_latencies(client, name, queries, {"top_k": 10})
            recall = recall_at_10(found, truth)
            api = percentiles(latencies)
            log(f"search: p50 {api['p50']:.2f} ms, p99 {api['p99']:.2f} ms, recall@10 {recall:.3f}")
            qps_1 = await qps(client, name, queries, 1)
            qps_8 = await qps(client, name, np.vstack([queries] * 4), 8)
            log(f"QPS: {qps_1:.0f} (1 client), {qps_8:.0f} (8 clients)")

            # Filtered search at 1% selectivity (bucket = id % 100).
            bucket_ids = np.arange(7, n, 100)
            filtered_truth = [list(bucket_ids[np.argsort(-(data[bucket_ids] @ q))[:10]]) for q in queries]
            f_latencies, f_found, f_strategies = await search_latencies(
                client, name, queries, {"top_k": 10, "filter": {"bucket": 7}}
            )
            filtered_recall = recall_at_10(f_found, filtered_truth)
            filtered = percentiles(f_latencies)
            log(
                f"filtered (1%): p50 {filtered['p50']:.2f} ms, "
                f"recall@10 {filtered_recall:.3f}, {f_strategies[0]}"
            )

            comparison: dict[str, Any] = {}
            if target.database_url:
                import asyncpg

                conn = await asyncpg.connect(target.database_url)
                try:
                    collection_id = await conn.fetchval("SELECT id FROM collections WHERE name = $1", name)
                finally:
                    await conn.close()
                table = f"vectors_{collection_id}"
                comparison = await compare_with_raw(
                    client, name, target.database_url, table, queries, args, qps_8, log
                )

            log(f"upserting {len(extra)} more vectors into the indexed collection ...")
            indexed_rate = await upload(client, name, extra, n, metadata=True, encoding=encoding)
            log(f"  {indexed_rate:,.0f} vectors/s")
        finally:
            # Also when a step fails: a benchmark leaves no collection behind unless told to.
            if not args.keep:
                await client.delete(f"/api/v1/collections/{name}")

    result: dict[str, Any] = {
        "data": description,
        "vectors": n,
        "dim": dim,
        "queries": len(queries),
        "upsert_encoding": encoding,
        "upsert_vectors_per_s": round(upsert_rate, 1),
        **(
            {
                "upsert_b64_vectors_per_s": round(b64_rate, 1),
                "upsert_b64_over_json": round(b64_rate / upsert_rate, 2),
            }
            if b64_rate is not None
            else {}
        ),
        "upsert_indexed_vectors_per_s": round(indexed_rate, 1),
        "index_build_s": None if build_s is None else round(build_s, 2),
        "search_p50_ms": round(api["p50"], 3),
        "search_p95_ms": round(api["p95"], 3),
        "search_p99_ms": round(api["p99"], 3),
        "qps_1": round(qps_1, 1),
        "qps_8": round(qps_8, 1),
        "recall_at_10": round(recall, 4),
        "search_strategy": strategies[0],
        "filtered_1pct_p50_ms": round(filtered["p50"], 3),
        "filtered_1pct_p99_ms": round(filtered["p99"], 3),
        "filtered_1pct_recall_at_10": round(filtered_recall, 4),
        "filtered_1pct_strategy": f_strategies[0],
        "p99_over_p50": round(api["p99"] / api["p50"], 2),
        **comparison,
    }
    if comparison:
        result["raw_copy_vectors_per_s"] = round(await raw_copy(target.database_url or "", data[:20_000]), 1)
        result["upsert_over_raw_copy"] = round(upsert_rate / result["raw_copy_vectors_per_s"], 3)
        if b64_rate is not None:
            result["upsert_b64_over_raw_copy"] = round(b64_rate / result["raw_copy_vectors_per_s"], 3)
    return result


def main(args: Any) -> int:
    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.url:
        if not args.key:
            raise SystemExit("--url needs --key (a READ_WRITE or ADMIN key)")
        target = Target(args.url.rstrip("/"), args.key, args.database_url)
    else:
        log(f"starting a temporary server ({args.workers} worker(s)) on a temporary embedded database ...")
        target = start_temporary_server({"VECTORHIVE_SERVER__WORKERS": str(args.workers)})
    try:
        result = asyncio.run(run(target, args, log))
    finally:
        if target.cleanup:
            target.cleanup()
    print_result(result, as_json=args.json)
    return 0


def print_result(result: dict[str, Any], *, as_json: bool) -> None:
    """One JSON object, or one aligned `name value` line per figure."""
    if as_json:
        print(json.dumps(result))
        return
    width = max(len(key) for key in result) + 2
    for key, value in result.items():
        print(f"{key:{width}s} {value}")
