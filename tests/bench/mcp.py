"""What MCP adds to a search: the same query as a REST call and as an MCP tool call (the official
SDK's client, over streamable HTTP, protocol 2026-07-28 and the handshake era), against a real
server on a temporary embedded database. Calls are interleaved so that drift affects all alike.

    python -m tests.bench.mcp [--calls 300] [--vectors 2000] [--dim 384] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import httpx
import httpx2
import numpy as np
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from service.bench import print_result, start_temporary_server


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _run(url: str, key: str, calls: int, vectors: int, dim: int) -> dict[str, list[float]]:
    headers = {"Authorization": f"Bearer {key}"}
    rng = np.random.default_rng(7)
    data = rng.standard_normal((vectors, dim)).astype(np.float32)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as rest:
        made = await rest.post("/api/v1/collections", json={"name": "bench_mcp", "dimension": dim})
        assert made.status_code == 201, made.text
        for start in range(0, vectors, 500):
            batch = [
                {"id": f"v{i}", "vector": data[i].tolist()} for i in range(start, min(vectors, start + 500))
            ]
            assert (
                await rest.put("/api/v1/collections/bench_mcp/vectors", json={"vectors": batch})
            ).status_code == 200
        queries = rng.standard_normal((calls, dim)).astype(np.float32).tolist()
        body: dict[str, Any] = {"top_k": 10, "include_metadata": False}
        samples: dict[str, list[float]] = {"rest": [], "mcp_2026_07_28": [], "mcp_handshake": []}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=60) as http_modern,
            httpx2.AsyncClient(headers=headers, timeout=60) as http_legacy,
            Client(streamable_http_client(f"{url}/mcp", http_client=http_modern), mode="auto") as modern,
            Client(streamable_http_client(f"{url}/mcp", http_client=http_legacy), mode="legacy") as legacy,
        ):
            clients = {"mcp_2026_07_28": modern, "mcp_handshake": legacy}
            for round_ in range(-20, calls):  # 20 warm-up rounds
                query = queries[max(round_, 0)]
                started = time.perf_counter()
                answer = await rest.post(
                    "/api/v1/collections/bench_mcp/search", json={**body, "vector": query}
                )
                elapsed = time.perf_counter() - started
                assert answer.status_code == 200, answer.text
                if round_ >= 0:
                    samples["rest"].append(elapsed * 1000)
                for name, client in clients.items():
                    started = time.perf_counter()
                    result = await client.call_tool(
                        "search", {**body, "vector": query, "collection": "bench_mcp"}
                    )
                    elapsed = time.perf_counter() - started
                    assert not result.is_error, result
                    if round_ >= 0:
                        samples[name].append(elapsed * 1000)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=300, help="searches per variant")
    parser.add_argument("--vectors", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    # The tenant's admin key: it creates the collection over REST and may call every MCP tool.
    target = start_temporary_server({"VECTORHIVE_EMBEDDINGS__ENABLED": "false"})
    try:
        samples = asyncio.run(_run(target.url, target.key, args.calls, args.vectors, args.dim))
    finally:
        target.cleanup()
    result: dict[str, float | int] = {
        "calls_per_variant": args.calls,
        "vectors": args.vectors,
        "dim": args.dim,
    }
    for name, values in samples.items():
        result[f"{name}_p50_ms"] = round(statistics.median(values), 3)
        result[f"{name}_p99_ms"] = round(_percentile(values, 0.99), 3)
    for name in ("mcp_2026_07_28", "mcp_handshake"):
        result[f"{name}_overhead_p50_ms"] = round(
            float(result[f"{name}_p50_ms"]) - float(result["rest_p50_ms"]), 3
        )
    print_result(result, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
