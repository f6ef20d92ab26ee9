"""Measurements through the API: batched upserts, search latencies and queries per second, and
their percentiles and recall."""

from __future__ import annotations

import asyncio
import base64
import statistics
import time
from typing import Any

import httpx
import msgspec
import numpy as np

from service.bench.http import HttpConnection, tell_about_429

BATCH = 1000
UPLOAD_STREAMS = 2


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50": statistics.median(ordered), "p95": at(0.95), "p99": at(0.99)}


async def send(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request; a 429 is waited out as its Retry-After says (the server's rate limits are the
    tenant's to set, the benchmark only says so once), up to ten times."""
    for _ in range(10):
        response = await client.request(method, url, **kwargs)
        if response.status_code != 429:
            return response
        wait = float(response.headers.get("retry-after", "1"))
        tell_about_429(response.json().get("detail", "") if response.content else "", wait)
        await asyncio.sleep(wait)
    return response


def _b64(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


# Upsert bodies are made before the clock starts, as the raw COPY's rows are (raw_sql.raw_copy): a
# client's JSON encoding is the client's work, and here it would take the server's cores (measured
# in docs/benchmarks.md). Bounded: above this many bytes of bodies they are made as they are sent.
PREPARED_BODIES_MAX_BYTES = 2 << 30


def upsert_body(data: np.ndarray, start: int, offset: int, metadata: bool, encoding: str) -> bytes:
    """The PUT .../vectors body of the batch of `data` from `start`; ids count from offset + start."""
    chunk = data[start : start + BATCH]
    items = [
        {
            "id": str(offset + start + i),
            **({"vector_b64": _b64(chunk[i])} if encoding == "base64" else {"vector": chunk[i].tolist()}),
            **({"metadata": {"bucket": (offset + start + i) % 100}} if metadata else {}),
        }
        for i in range(len(chunk))
    ]
    return msgspec.json.encode({"vectors": items})


async def upload(
    client: httpx.AsyncClient,
    name: str,
    data: np.ndarray,
    offset: int,
    metadata: bool,
    encoding: str = "json",
) -> float:
    """Upsert all of `data` in batches over UPLOAD_STREAMS connections; returns vectors/s. encoding:
    json (`vector`, numbers) or base64 (`vector_b64`, little-endian float32)."""
    batches = list(range(0, len(data), BATCH))
    # About 20 bytes per value as JSON text, 5.4 as base64.
    estimate = data.size * (20 if encoding == "json" else 6)
    prepared = (
        {start: upsert_body(data, start, offset, metadata, encoding) for start in batches}
        if estimate <= PREPARED_BODIES_MAX_BYTES
        else {}
    )
    queue: asyncio.Queue[int] = asyncio.Queue()
    for start in batches:
        queue.put_nowait(start)

    async def stream() -> None:
        while not queue.empty():
            start = queue.get_nowait()
            body = prepared.pop(start, None) or upsert_body(data, start, offset, metadata, encoding)
            response = await send(
                client,
                "PUT",
                f"/api/v1/collections/{name}/vectors",
                content=body,
                headers={"content-type": "application/json"},
            )
            if response.status_code != 200:
                raise SystemExit(f"upsert failed: {response.status_code} {response.text[:500]}")

    started = time.perf_counter()
    await asyncio.gather(*(stream() for _ in range(UPLOAD_STREAMS)))
    return len(data) / (time.perf_counter() - started)


def search_bodies(queries: np.ndarray, **body: Any) -> list[bytes]:
    """The searches' JSON, made before the timed loops (as the raw-SQL side's vectors are ready)."""
    return [msgspec.json.encode({"vector": query.tolist(), **body}) for query in queries]


def search_connection(client: httpx.AsyncClient) -> HttpConnection:
    """A lean keep-alive connection to the server of `client`, with its credentials (bench.http)."""
    return HttpConnection(str(client.base_url), {"authorization": client.headers["authorization"]})


def search_path(name: str) -> str:
    return f"/api/v1/collections/{name}/search"


async def search_latencies(
    client: httpx.AsyncClient, name: str, queries: np.ndarray, body: dict[str, Any]
) -> tuple[list[float], list[list[int]], list[str]]:
    latencies, found, strategies = [], [], []
    async with search_connection(client) as connection:
        for request in search_bodies(queries, **body):
            started = time.perf_counter()
            status, answer = await connection.post(search_path(name), request)
            latencies.append((time.perf_counter() - started) * 1000)
            if status != 200:
                raise SystemExit(f"search failed: {status} {answer[:500]!r}")
            result = msgspec.json.decode(answer)
            found.append([int(hit["id"]) for hit in result["results"]])
            strategies.append(result["strategy"])
    return latencies, found, strategies


async def search_top_10(connection: HttpConnection, name: str, request: bytes) -> None:
    """One plain search for the 10 nearest (a body of search_bodies(..., top_k=10)), as the QPS
    runs and the raw-SQL comparison send it."""
    status, answer = await connection.post(search_path(name), request)
    if status != 200:
        raise SystemExit(f"search failed: {status} {answer[:500]!r}")


async def qps(client: httpx.AsyncClient, name: str, queries: np.ndarray, concurrency: int) -> float:
    """Searches per second from `concurrency` clients, each on a connection of its own."""
    per_client = max(1, len(queries) // concurrency)
    bodies = search_bodies(queries[: per_client * concurrency], top_k=10)
    connections = [search_connection(client) for _ in range(concurrency)]
    for connection in connections:
        await connection.__aenter__()
    try:

        async def worker(connection: HttpConnection, part: list[bytes]) -> None:
            for request in part:
                await search_top_10(connection, name, request)

        parts = [bodies[i * per_client : (i + 1) * per_client] for i in range(concurrency)]
        started = time.perf_counter()
        await asyncio.gather(*(worker(c, p) for c, p in zip(connections, parts, strict=True)))
        return (per_client * concurrency) / (time.perf_counter() - started)
    finally:
        for connection in connections:
            await connection.__aexit__()


def recall_at_10(found: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(f[:10]) & set(t[:10])) / 10 for f, t in zip(found, truth, strict=True)]))
