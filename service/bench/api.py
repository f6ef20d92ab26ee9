"""Measurements through the API: batched upserts, search latencies and queries per second, and
their percentiles and recall."""

from __future__ import annotations

import asyncio
import base64
import statistics
import sys
import time
from typing import Any

import httpx
import msgspec
import numpy as np

BATCH = 1000
UPLOAD_STREAMS = 2


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50": statistics.median(ordered), "p95": at(0.95), "p99": at(0.99)}


_told_about_429 = False


async def send(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
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
            response = await send(
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


async def search_latencies(
    client: httpx.AsyncClient, name: str, queries: np.ndarray, body: dict[str, Any]
) -> tuple[list[float], list[list[int]], list[str]]:
    latencies, found, strategies = [], [], []
    for query in queries:
        started = time.perf_counter()
        response = await send(
            client, "POST", f"/api/v1/collections/{name}/search", json={"vector": query.tolist(), **body}
        )
        latencies.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"search failed: {response.status_code} {response.text[:500]}")
        result = response.json()
        found.append([int(hit["id"]) for hit in result["results"]])
        strategies.append(result["strategy"])
    return latencies, found, strategies


async def search_top_10(client: httpx.AsyncClient, name: str, query: np.ndarray) -> None:
    """One plain search for the 10 nearest, as the QPS runs and the raw-SQL comparison send it."""
    response = await send(
        client, "POST", f"/api/v1/collections/{name}/search", json={"vector": query.tolist(), "top_k": 10}
    )
    response.raise_for_status()


async def qps(client: httpx.AsyncClient, name: str, queries: np.ndarray, concurrency: int) -> float:
    per_client = max(1, len(queries) // concurrency)

    async def worker(part: np.ndarray) -> None:
        for query in part:
            await search_top_10(client, name, query)

    parts = [queries[i * per_client : (i + 1) * per_client] for i in range(concurrency)]
    started = time.perf_counter()
    await asyncio.gather(*(worker(p) for p in parts))
    return (per_client * concurrency) / (time.perf_counter() - started)


def recall_at_10(found: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(f[:10]) & set(t[:10])) / 10 for f, t in zip(found, truth, strict=True)]))
