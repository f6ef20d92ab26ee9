"""Embedding throughput through the API, against the model alone, and document ingestion.

Starts `vectorhive serve` on a temporary embedded database (the default model from the shared
model cache), then measures, one figure after another so they do not compete for the cores:

- the model alone, in this process (the same llama.cpp code the server runs), for requests of
  32 short texts: the yardstick for the API's overhead;
- POST /api/v1/embeddings with 1, 32 and 256 short texts per request, one client;
- 8 concurrent clients (1 text and 32 texts per request), where the server micro-batches;
- POST .../documents of 1 KB texts (20 per request): documents and chunks per second end to end.

    python -m tests.bench.embeddings [--seconds 8] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

from service.bench import print_result, start_temporary_server
from service.config import EmbeddingsSettings
from service.inference.registry import ModelRegistry

CACHE = os.environ.get("VECTORHIVE_TEST_MODEL_CACHE", str(Path.home() / ".cache" / "vectorhive-test-models"))
WORDS = ["river", "mountain", "letter", "garden", "window", "market", "evening", "train", "coffee", "winter"]


def sentences(n: int, salt: int = 0) -> list[str]:
    """Short varied sentences of about 13 tokens each."""
    return [
        f"The {WORDS[(i + salt) % 10]} near the {WORDS[(i * 3 + salt) % 10]} was quiet on day {i + salt}."
        for i in range(n)
    ]


def document(i: int) -> str:
    """About 1 KB of prose."""
    parts = [
        f"Report {i}: the {WORDS[(i + j) % 10]} committee met to discuss the {WORDS[(i * 7 + j) % 10]} "
        f"and agreed on step {j} of the plan after a long debate about costs and timing."
        for j in range(8)
    ]
    return " ".join(parts)[:1024]


def model_alone(rounds_seconds: float) -> float:
    """Median seconds for 32 texts through the model in this process."""

    async def run() -> float:
        registry = ModelRegistry(EmbeddingsSettings(cache_dir=CACHE))
        registry.start()
        await registry.wait_loaded()
        model = registry.embedder()
        samples = []
        deadline = time.monotonic() + rounds_seconds
        salt = 0
        while time.monotonic() < deadline:
            texts = sentences(32, salt)
            salt += 1
            started = time.perf_counter()
            await model.embed(texts)
            samples.append(time.perf_counter() - started)
        await registry.close()
        return statistics.median(samples)

    return asyncio.run(run())


def sequential(client: httpx.Client, key: str, size: int, seconds: float) -> tuple[float, float]:
    """(embeddings per second, median seconds per request) with one client."""
    samples, texts_done, salt = [], 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        body = {"input": sentences(size, salt)}
        salt += 1
        started = time.perf_counter()
        response = client.post("/api/v1/embeddings", json=body, headers={"Authorization": f"Bearer {key}"})
        samples.append(time.perf_counter() - started)
        response.raise_for_status()
        texts_done += size
    return texts_done / sum(samples), statistics.median(samples)


def concurrent(url: str, key: str, size: int, clients: int, seconds: float, encoding: str = "float") -> float:
    """Embeddings per second with `clients` threads each sending requests of `size` texts."""
    counts = [0] * clients
    deadline = time.monotonic() + seconds

    def worker(n: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            salt = n * 100_000
            while time.monotonic() < deadline:
                response = client.post(
                    "/api/v1/embeddings",
                    json={"input": sentences(size, salt), "encoding_format": encoding},
                    headers={"Authorization": f"Bearer {key}"},
                )
                response.raise_for_status()
                counts[n] += size
                salt += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per figure")
    parser.add_argument("--documents", type=int, default=200, help="1 KB documents to ingest")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    result: dict[str, float | int] = {}
    alone = model_alone(args.seconds)
    result["model_alone_32_texts_ms"] = round(alone * 1000, 2)
    result["model_alone_embeddings_per_s"] = round(32 / alone, 1)

    target = start_temporary_server({"VECTORHIVE_EMBEDDINGS__CACHE_DIR": CACHE})
    try:
        with httpx.Client(base_url=target.url, timeout=60) as client:
            headers = {"Authorization": f"Bearer {target.key}"}
            deadline = time.monotonic() + 120
            while client.get("/api/v1/models", headers=headers).json()["data"][0]["status"] == "loading":
                if time.monotonic() > deadline:
                    raise SystemExit("the model did not load")
                time.sleep(0.2)
            sequential(client, target.key, 32, 2.0)  # warm-up
            for size in (1, 32, 256):
                rate, median = sequential(client, target.key, size, args.seconds)
                result[f"api_{size}_texts_embeddings_per_s"] = round(rate, 1)
                result[f"api_{size}_texts_p50_ms"] = round(median * 1000, 2)
            result["api_over_model_32_texts"] = round(
                float(result["api_32_texts_p50_ms"]) / (alone * 1000), 3
            )
            for size in (1, 32):
                result[f"api_8_clients_{size}_texts_embeddings_per_s"] = round(
                    concurrent(target.url, target.key, size, 8, args.seconds), 1
                )
            # The same with vectors as base64 (what OpenAI's clients ask for): far less JSON for
            # the server to write and the clients, on the same two cores, to read.
            result["api_8_clients_32_texts_base64_embeddings_per_s"] = round(
                concurrent(target.url, target.key, 32, 8, args.seconds, "base64"), 1
            )

            made = client.post(
                "/api/v1/collections",
                json={"name": "docs", "embedding": {"model": "all-minilm-l6-v2"}},
                headers=headers,
            )
            made.raise_for_status()
            chunks, tokens, started = 0, 0, time.perf_counter()
            for first in range(0, args.documents, 20):
                batch = [
                    {"id": f"d{i}", "text": document(i)}
                    for i in range(first, min(first + 20, args.documents))
                ]
                response = client.post(
                    "/api/v1/collections/docs/documents", json={"documents": batch}, headers=headers
                )
                response.raise_for_status()
                chunks += response.json()["chunks"]
                tokens += response.json()["tokens"]
            elapsed = time.perf_counter() - started
            result["documents_1kb_per_s"] = round(args.documents / elapsed, 1)
            result["document_tokens_per_s"] = round(tokens / elapsed, 1)
            result["document_chunks_per_s"] = round(chunks / elapsed, 1)
            result["chunks_per_1kb_document"] = round(chunks / args.documents, 2)
    finally:
        target.cleanup()
    print_result(result, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
