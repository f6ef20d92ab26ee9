"""vectorhive bench: load vectors through the API, then measure search.

Against a running server (--url/--key; add --database-url for the raw-SQL comparison) or, by
default, a temporary server on a temporary embedded database that is removed afterwards.

Phases: bulk upsert into a fresh collection (no HNSW index yet), the background index build,
single-client latency and recall@10 against exact search (numpy, on the same vectors), QPS at 1
and 8 concurrent clients, the same searches as raw SQL on the same database, a filtered search
at 1% selectivity, and upserts into the now indexed collection.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np

BATCH = 1000
UPLOAD_STREAMS = 2
INDEXED_UPSERT_VECTORS = 10_000


@dataclass
class Target:
    url: str
    key: str
    database_url: str | None
    cleanup: Any = None
    pid: int | None = None  # the server process, when this benchmark started it


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_temporary_server(env_overrides: dict[str, str] | None = None, permission: str = "admin") -> Target:
    """A server on a temporary embedded database, with a tenant ("bench") and a key for it."""
    workdir = Path(tempfile.mkdtemp(prefix="vectorhive-bench-"))
    env = {
        **os.environ,
        "VECTORHIVE_SERVER__ACCESS_LOG": "false",
        "VECTORHIVE_SERVER__LOG_LEVEL": "warning",
        # The benchmark measures the database and the API, not the tenant's request quota (1,000
        # requests a minute by default would turn its QPS runs into 429s).
        "VECTORHIVE_RATE_LIMITING__ENABLED": "false",
        **(env_overrides or {}),
    }
    cli = [sys.executable, "-m", "service.cli"]
    # Only serve and migrate create a database; the other commands refuse a folder without one.
    subprocess.run([*cli, "migrate"], cwd=workdir, env=env, check=True, capture_output=True)
    subprocess.run(
        [*cli, "tenants", "create", "bench"], cwd=workdir, env=env, check=True, capture_output=True
    )
    key = subprocess.run(
        [*cli, "keys", "create", "--tenant", "bench", "--permission", permission],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    port = _free_port()
    server = subprocess.Popen([*cli, "serve", "--port", str(port)], cwd=workdir, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        server.kill()
        raise SystemExit("the temporary server did not become ready")
    data_dir = workdir / "data" / "postgres"

    def cleanup() -> None:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
        subprocess.run(["rm", "-rf", str(workdir)], check=False)

    # The embedded server listens on a unix socket in its data folder.
    return Target(url, key, f"postgresql://postgres@/postgres?host={data_dir}", cleanup, server.pid)


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50": statistics.median(ordered), "p95": at(0.95), "p99": at(0.99)}


_told_about_429 = False


async def _send(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request; a 429 is waited out as its Retry-After says (the server's rate limits are the
    tenant's to set, the benchmark only says so once), up to ten times."""
    global _told_about_429
    for _ in range(10):
        response = await client.request(method, url, **kwargs)
        if response.status_code != 429:
            return response
        wait = float(response.headers.get("retry-after", "1"))
        if not _told_about_429:
            detail = response.json().get("detail", "") if response.content else ""
            print(
                f"the server rate-limits this key ({detail}); waiting {wait:g} s as Retry-After says. "
                "Raise the tenant's limits (PUT /api/v1/admin/tenants/{id}/quotas) for undisturbed figures.",
                file=sys.stderr,
                flush=True,
            )
            _told_about_429 = True
        await asyncio.sleep(wait)
    return response


def _b64(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


async def _upload(
    client: httpx.AsyncClient,
    name: str,
    data: np.ndarray,
    offset: int,
    metadata: bool,
    encoding: str = "json",
) -> float:
    """Upsert all of `data` in batches over UPLOAD_STREAMS connections; returns vectors/s. encoding:
    json (`vector`, numbers) or base64 (`vector_b64`, little-endian float32)."""
    encoder = msgspec.json.Encoder()
    batches = list(range(0, len(data), BATCH))
    queue: asyncio.Queue[int] = asyncio.Queue()
    for start in batches:
        queue.put_nowait(start)

    async def stream() -> None:
        while not queue.empty():
            start = queue.get_nowait()
            chunk = data[start : start + BATCH]
            items = [
                {
                    "id": str(offset + start + i),
                    **(
                        {"vector_b64": _b64(chunk[i])}
                        if encoding == "base64"
                        else {"vector": chunk[i].tolist()}
                    ),
                    **({"metadata": {"bucket": (offset + start + i) % 100}} if metadata else {}),
                }
                for i in range(len(chunk))
            ]
            response = await _send(
                client,
                "PUT",
                f"/api/v1/collections/{name}/vectors",
                content=encoder.encode({"vectors": items}),
                headers={"content-type": "application/json"},
            )
            if response.status_code != 200:
                raise SystemExit(f"upsert failed: {response.status_code} {response.text[:500]}")

    started = time.perf_counter()
    await asyncio.gather(*(stream() for _ in range(UPLOAD_STREAMS)))
    return len(data) / (time.perf_counter() - started)


async def _search_latencies(
    client: httpx.AsyncClient, name: str, queries: np.ndarray, body: dict[str, Any]
) -> tuple[list[float], list[list[int]], list[str]]:
    latencies, found, strategies = [], [], []
    for query in queries:
        started = time.perf_counter()
        response = await _send(
            client, "POST", f"/api/v1/collections/{name}/search", json={"vector": query.tolist(), **body}
        )
        latencies.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"search failed: {response.status_code} {response.text[:500]}")
        result = response.json()
        found.append([int(hit["id"]) for hit in result["results"]])
        strategies.append(result["strategy"])
    return latencies, found, strategies


async def _qps(client: httpx.AsyncClient, name: str, queries: np.ndarray, concurrency: int) -> float:
    per_client = max(1, len(queries) // concurrency)

    async def worker(part: np.ndarray) -> None:
        for query in part:
            response = await _send(
                client,
                "POST",
                f"/api/v1/collections/{name}/search",
                json={"vector": query.tolist(), "top_k": 10},
            )
            response.raise_for_status()

    parts = [queries[i * per_client : (i + 1) * per_client] for i in range(concurrency)]
    started = time.perf_counter()
    await asyncio.gather(*(worker(p) for p in parts))
    return (per_client * concurrency) / (time.perf_counter() - started)


_RAW_SEARCH = "SELECT id, 1 - (embedding <=> $1) AS score FROM {table} ORDER BY embedding <=> $1 LIMIT 10"


async def _raw_connection(database_url: str, ef_search: int) -> Any:
    import asyncpg
    from pgvector.asyncpg import register_vector

    conn = await asyncpg.connect(database_url)
    await register_vector(conn)
    await conn.execute(f"SET hnsw.ef_search = {int(ef_search)}")
    return conn


async def _paired(
    client: httpx.AsyncClient, name: str, database_url: str, table: str, queries: np.ndarray, ef_search: int
) -> dict[str, list[float]]:
    """Each query through the API and as raw SQL, the order alternating from query to query: a
    vector searched a second time is faster (warm buffers), so each side goes first half the time.
    -> latencies by side and by which went first."""
    conn = await _raw_connection(database_url, ef_search)
    out: dict[str, list[float]] = {
        k: [] for k in ("api", "raw", "api_first", "raw_first", "api_second", "raw_second")
    }
    try:
        statement = await conn.prepare(_RAW_SEARCH.format(table=table))

        async def api(query: np.ndarray) -> float:
            started = time.perf_counter()
            response = await _send(
                client,
                "POST",
                f"/api/v1/collections/{name}/search",
                json={"vector": query.tolist(), "top_k": 10},
            )
            response.raise_for_status()
            return (time.perf_counter() - started) * 1000

        async def raw(query: np.ndarray) -> float:
            started = time.perf_counter()
            await statement.fetch(query)
            return (time.perf_counter() - started) * 1000

        for i, query in enumerate(queries):
            if i % 2 == 0:
                a, r = await api(query), await raw(query)
                out["api_first"].append(a)
                out["raw_second"].append(r)
            else:
                r, a = await raw(query), await api(query)
                out["raw_first"].append(r)
                out["api_second"].append(a)
            out["api"].append(a)
            out["raw"].append(r)
    finally:
        await conn.close()
    return out


async def _raw_qps(
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


async def _raw_copy(database_url: str, data: np.ndarray) -> float:
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


def _recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(f[:10]) & set(t[:10])) / 10 for f, t in zip(found, truth, strict=True)]))


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
                    b64_rate = await _upload(client, scratch, data, 0, metadata=True, encoding="base64")
                    log(f"  {b64_rate:,.0f} vectors/s")
                finally:
                    await client.delete(f"/api/v1/collections/{scratch}")
            encoding = "base64" if args.encoding == "base64" else "json"
            log(
                f"uploading {n} vectors ({encoding}) in batches of {BATCH} "
                f"over {UPLOAD_STREAMS} connections ..."
            )
            upsert_rate = await _upload(client, name, data, 0, metadata=True, encoding=encoding)
            log(f"  {upsert_rate:,.0f} vectors/s")

            log("waiting for the HNSW index ...")
            waited = time.perf_counter()
            while True:
                state = (await client.get(f"/api/v1/collections/{name}")).json()["index"]
                if state["status"] in ("ready", "failed"):
                    break
                await asyncio.sleep(0.5)
            if state["status"] != "ready":
                raise SystemExit(f"index build failed: {state['error']}")
            build_s = (
                np.datetime64(state["finished_at"].rstrip("Z"))
                - np.datetime64(state["started_at"].rstrip("Z"))
            ) / np.timedelta64(1, "s")
            log(f"  built in {build_s:.1f} s (waited {time.perf_counter() - waited:.1f} s)")

            truth = [list(np.argsort(-(data @ q))[:10]) for q in queries]
            await _search_latencies(client, name, queries[:20], {"top_k": 10})  # warm-up
            latencies, found, strategies = await _search_latencies(client, name, queries, {"top_k": 10})
            recall = _recall(found, truth)
            api = _percentiles(latencies)
            log(f"search: p50 {api['p50']:.2f} ms, p99 {api['p99']:.2f} ms, recall@10 {recall:.3f}")
            qps_1 = await _qps(client, name, queries, 1)
            qps_8 = await _qps(client, name, np.vstack([queries] * 4), 8)
            log(f"QPS: {qps_1:.0f} (1 client), {qps_8:.0f} (8 clients)")

            # Filtered search at 1% selectivity (bucket = id % 100).
            bucket_ids = np.arange(7, n, 100)
            filtered_truth = [list(bucket_ids[np.argsort(-(data[bucket_ids] @ q))[:10]]) for q in queries]
            f_latencies, f_found, f_strategies = await _search_latencies(
                client, name, queries, {"top_k": 10, "filter": {"bucket": 7}}
            )
            filtered_recall = _recall(f_found, filtered_truth)
            filtered = _percentiles(f_latencies)
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
                comparison = await _compare_with_raw(
                    client, name, target.database_url, table, queries, args, qps_8, log
                )

            log(f"upserting {len(extra)} more vectors into the indexed collection ...")
            indexed_rate = await _upload(client, name, extra, n, metadata=True, encoding=encoding)
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
        "index_build_s": round(float(build_s), 2),
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
        result["raw_copy_vectors_per_s"] = round(await _raw_copy(target.database_url or "", data[:20_000]), 1)
        result["upsert_over_raw_copy"] = round(upsert_rate / result["raw_copy_vectors_per_s"], 3)
        if b64_rate is not None:
            result["upsert_b64_over_raw_copy"] = round(b64_rate / result["raw_copy_vectors_per_s"], 3)
    return result


async def _compare_with_raw(
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
    await _paired(client, name, database_url, table, queries[:20], args.ef_search)  # warm-up
    passes = [await _paired(client, name, database_url, table, queries, args.ef_search) for _ in range(2)]
    ratios = [statistics.median(p["api"]) / statistics.median(p["raw"]) for p in passes]
    both = {k: [x for p in passes for x in p[k]] for k in passes[0]}
    api, raw = _percentiles(both["api"]), _percentiles(both["raw"])
    raw_qps_8 = await _raw_qps(database_url, table, np.vstack([queries] * 4), 8, args.ef_search)
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
