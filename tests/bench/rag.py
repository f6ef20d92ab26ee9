"""RAG answers end to end: the semantic cache on a paraphrase workload, time to first token and
tokens per second of the default chat model (SmolLM2-135M-Instruct) with 1 and 4 askers, and the
latency of an answer served from the cache.

Starts `vectorhive serve` on a temporary embedded database with the default models (from the
shared model cache), stores a small corpus as documents of one text collection, then:

- workload: each base question, then its paraphrases, then unrelated questions (about nothing in
  the corpus, or about a neighbouring fact); hit rate over all of them, and wrong hits (an
  unrelated question answered from the cache, or a paraphrase given another question's answer);
- streaming answers with the cache off: time to the first content event and completion tokens
  per second (from the first token to message_end), one asker, then 4 at once;
- cache hits: p50 and p95 latency of non-streaming answers to cached questions.

    python -m tests.bench.rag [--similarity 0.95] [--max-tokens 48] [--rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from service.bench import print_result, start_temporary_server

CACHE = os.environ.get("VECTORHIVE_TEST_MODEL_CACHE", str(Path.home() / ".cache" / "vectorhive-test-models"))

CORPUS = {
    "danube": "The Danube flows through ten countries, from the Black Forest to the Black Sea.",
    "sourdough": "Sourdough bread rises slowly because wild yeast and bacteria ferment the dough overnight.",
    "guitar": "A standard guitar has six strings tuned E, A, D, G, B and E from low to high.",
    "taxes": "In the United States, federal income tax returns are usually due on April 15.",
    "everest": "Mount Everest is 8,849 metres high and lies on the border of Nepal and China.",
    "photosynthesis": "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen in plants.",
    "python": "Python was created by Guido van Rossum and first released in 1991.",
    "moon": "The Moon is about 384,400 kilometres from Earth and takes 27 days to orbit it.",
    "coffee": "Coffee beans are the roasted seeds of the Coffea plant, first cultivated in Ethiopia.",
    "bees": "Honey bees communicate the direction of flowers to each other with a waggle dance.",
    "chess": "In chess, castling moves the king two squares towards a rook, which jumps over it.",
    "vaccines": "Vaccines train the immune system by exposing it to a harmless part of a pathogen.",
}

# (base question, paraphrases): the paraphrases reword the question the way users retype it.
QUESTIONS = [
    (
        "How many countries does the Danube flow through?",
        ["How many countries does the Danube river flow through?",
         "how many countries does the danube flow through"],
    ),
    (
        "Why does sourdough bread rise slowly?",
        ["Why does sourdough bread rise so slowly?",
         "Why is it that sourdough bread rises slowly?"],
    ),
    (
        "How many strings does a standard guitar have?",
        ["How many strings does a normal guitar have?",
         "How many strings are on a standard guitar?"],
    ),
    (
        "When are US federal income tax returns due?",
        ["When are federal income tax returns due in the US?",
         "When are US income tax returns due?"],
    ),
    (
        "How high is Mount Everest?",
        ["How tall is Mount Everest?",
         "What is the height of Mount Everest?"],
    ),
    (
        "What does photosynthesis produce?",
        ["What does photosynthesis make?",
         "What is produced by photosynthesis?"],
    ),
    (
        "Who created the Python programming language?",
        ["Who created Python, the programming language?",
         "Who is the creator of the Python programming language?"],
    ),
    (
        "How far is the Moon from Earth?",
        ["How far away is the Moon from Earth?",
         "How far is the Moon from the Earth?"],
    ),
    (
        "Where was coffee first cultivated?",
        ["Where was coffee first grown?",
         "Where was coffee cultivated first?"],
    ),
    (
        "How do honey bees tell each other where flowers are?",
        ["How do honey bees tell one another where flowers are?",
         "How do honeybees tell each other where the flowers are?"],
    ),
    (
        "How does castling work in chess?",
        ["How does castling work in a game of chess?",
         "In chess, how does castling work?"],
    ),
    (
        "How do vaccines train the immune system?",
        ["How do vaccines train our immune system?",
         "How does a vaccine train the immune system?"],
    ),
]  # fmt: skip

UNRELATED = [
    "How many countries does the Rhine flow through?",
    "Why does rye bread taste sour?",
    "How many strings does a violin have?",
    "When are UK tax returns due?",
    "How high is Mont Blanc?",
    "Who created the Java programming language?",
    "How far is Mars from Earth?",
    "Where was tea first cultivated?",
]


def wait_ready(client: httpx.Client, key: str) -> None:
    """Until the embedding and the chat model are loaded (both load in the background)."""
    headers = {"Authorization": f"Bearer {key}"}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        probe = client.post(
            "/api/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
            headers=headers,
        )
        models = client.get("/api/v1/models", headers=headers).json()["data"]
        if probe.status_code == 200 and all(m["status"] != "loading" for m in models):
            return
        time.sleep(0.5)
    raise SystemExit("the models did not load")


def ask(client: httpx.Client, key: str, question: str, **extra: Any) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = client.post(
        "/api/v1/collections/kb/answer",
        json={"question": question, **extra},
        headers={"Authorization": f"Bearer {key}"},
    )
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return response, elapsed


def streamed(url: str, key: str, question: str, max_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first content event, completion tokens per second, completion tokens)."""
    body = {"question": question, "stream": True, "cache": False, "max_tokens": max_tokens}
    started = time.perf_counter()
    first: float | None = None
    end: dict[str, Any] = {}
    with (
        httpx.Client(base_url=url, timeout=300) as client,
        client.stream(
            "POST", "/api/v1/collections/kb/answer", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as response,
    ):
        response.raise_for_status()
        event = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                if event == "content" and first is None:
                    first = time.perf_counter()
                elif event == "message_end":
                    end = json.loads(line[6:])
                elif event == "error":
                    raise SystemExit(f"answer failed: {line}")
    finished = time.perf_counter()
    assert first is not None, "no content event"
    tokens = int(end["usage"]["completion_tokens"])
    return first - started, tokens / max(1e-9, finished - first), tokens


def askers(url: str, key: str, count: int, rounds: int, max_tokens: int) -> list[tuple[float, float, int]]:
    results: list[tuple[float, float, int]] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for r in range(rounds):
            base, _ = QUESTIONS[(n * rounds + r) % len(QUESTIONS)]
            outcome = streamed(url, key, base, max_tokens)
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--similarity", type=float, default=None, help="rag.cache_similarity (default: config)"
    )
    parser.add_argument("--max-tokens", type=int, default=48, help="completion tokens per answer")
    parser.add_argument("--rounds", type=int, default=2, help="streamed answers per asker")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    env = {"VECTORHIVE_EMBEDDINGS__CACHE_DIR": CACHE, "VECTORHIVE_GENERATION__CACHE_DIR": CACHE}
    if args.similarity is not None:
        env["VECTORHIVE_RAG__CACHE_SIMILARITY"] = str(args.similarity)
    target = start_temporary_server(env)
    result: dict[str, Any] = {}
    try:
        with httpx.Client(base_url=target.url, timeout=300) as client:
            headers = {"Authorization": f"Bearer {target.key}"}
            wait_ready(client, target.key)
            made = client.post(
                "/api/v1/collections",
                json={"name": "kb", "embedding": {"model": "all-minilm-l6-v2"}},
                headers=headers,
            )
            made.raise_for_status()
            documents = [{"id": k, "text": v} for k, v in CORPUS.items()]
            client.post(
                "/api/v1/collections/kb/documents", json={"documents": documents}, headers=headers
            ).raise_for_status()

            # -- the paraphrase workload
            asked = hits = wrong = 0
            answers: dict[str, str] = {}
            for base, paraphrases in QUESTIONS:
                response, _ = ask(client, target.key, base, max_tokens=args.max_tokens)
                answers[base] = response.json()["answer"]
                asked += 1
                hits += response.headers["x-cache"] == "hit"
                for paraphrase in paraphrases:
                    response, _ = ask(client, target.key, paraphrase, max_tokens=args.max_tokens)
                    asked += 1
                    if response.headers["x-cache"] == "hit":
                        hits += 1
                        wrong += response.json()["answer"] != answers[base]
            for question in UNRELATED:
                response, _ = ask(client, target.key, question, max_tokens=args.max_tokens)
                asked += 1
                if response.headers["x-cache"] == "hit":
                    hits += 1
                    wrong += 1
            result["workload_questions"] = asked
            result["cache_hit_rate"] = round(hits / asked, 3)
            result["cache_wrong_hits"] = wrong
            result["paraphrase_hit_rate"] = round(
                (hits - (wrong if wrong else 0)) / sum(len(p) for _, p in QUESTIONS), 3
            )

            # -- answers from the cache: latency
            latencies = []
            for _ in range(3):
                for base, _ in QUESTIONS:
                    response, elapsed = ask(client, target.key, base, max_tokens=args.max_tokens)
                    if response.headers["x-cache"] == "hit":
                        latencies.append(elapsed)
            if latencies:
                result["cache_hit_p50_ms"] = round(statistics.median(latencies) * 1000, 2)
                result["cache_hit_p95_ms"] = round(percentile(latencies, 0.95) * 1000, 2)

        # -- generation: time to first token and tokens per second, 1 and 4 askers (cache off)
        for count in (1, 4):
            runs = askers(target.url, target.key, count, args.rounds, args.max_tokens)
            result[f"askers_{count}_ttft_p50_ms"] = round(statistics.median(r[0] for r in runs) * 1000, 1)
            result[f"askers_{count}_tokens_per_s_p50"] = round(statistics.median(r[1] for r in runs), 1)
            result[f"askers_{count}_completion_tokens_mean"] = round(statistics.mean(r[2] for r in runs), 1)
    finally:
        target.cleanup()
    print_result(result, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
