"""End-to-end S5 import: encrypted SDK-style databases from a local portal into a real server.

For each size: the time from POST until the import reads `loaded` (every vector committed and
searchable, checked with a search), then until the collection's HNSW index is ready (built in the
background after the load), then a second import of the same manifest (the cache). Also the peak
memory (VmHWM) of the server process and of its decoding workers.

    python -m tests.bench.s5_import [--sizes 1000,10000,100000] [--dim 384] [--encoding json|cbor]
        [--data normal|clustered]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import httpx

from service.bench import print_result, start_temporary_server
from service.bench.run import make_data
from tests.fake_s5 import FakePortal, serve
from tests.s5_fixtures import build

KEY = os.urandom(32)


def _peak_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _decode_workers(pid: int) -> list[int]:
    """The server's worker processes (multiprocessing spawn children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if parent == pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _wait(client: httpx.Client, path: str, done: Any, timeout: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(path).json()
        if done(body):
            return body
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting on {path}: {body}")
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--encoding", choices=["json", "cbor"], default="json")
    parser.add_argument(
        "--data",
        choices=["normal", "clustered"],
        default="normal",
        help="the vectors: standard normal (what this benchmark always used; HNSW's hard case) or "
        "clustered like real embeddings (vectorhive bench's default generator)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--log-level", default="warning", help="the server's (info shows each import's phases)"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    portal = FakePortal()
    databases = {}
    for n in sizes:
        vectors = make_data("clustered", n, args.dim, seed=n)[0] if args.data == "clustered" else None
        databases[n] = build(
            n=n,
            dimensions=args.dim,
            chunk_size=10_000,
            encoding=args.encoding,
            key=KEY,
            name=f"bench-{n}",
            vectors=vectors,
        )
        portal.files.update(databases[n].files)
    results: dict[str, Any] = {
        "dim": args.dim,
        "encoding": args.encoding,
        "data": args.data,
        "encrypted": True,
        "sizes": {},
    }
    with serve(portal):
        target = start_temporary_server(
            {
                "S5_PORTAL_URL": portal.url,
                "VECTORHIVE_SERVER__LOG_LEVEL": args.log_level,
                # Imports alone: no model is prepared (downloaded, converted, loaded) meanwhile, which
                # would take CPU from the import and memory that is not the import's.
                "VECTORHIVE_EMBEDDINGS__ENABLED": "false",
                "VECTORHIVE_GENERATION__ENABLED": "false",
            },
            permission="admin",
        )
        try:
            assert target.pid is not None
            idle_kib = _rss_kib(target.pid)
            with httpx.Client(
                base_url=target.url, headers={"Authorization": f"Bearer {target.key}"}, timeout=60
            ) as client:
                for n, source in databases.items():
                    body = {
                        "source": "s5",
                        "manifest_path": source.manifest_path,
                        "user_address": source.user_address,
                        "encryption_key": KEY.hex(),
                    }
                    collection = f"import-{n}"
                    started = time.perf_counter()
                    accepted = client.post(f"/api/v1/collections/{collection}/imports", json=body)
                    assert accepted.status_code == 202, accepted.text
                    path = f"/api/v1/imports/{accepted.json()['import_id']}"
                    status = _wait(client, path, lambda b: b["status"] in ("loaded", "error", "cancelled"))
                    loaded_s = time.perf_counter() - started
                    assert status["status"] == "loaded", status
                    probe = client.post(
                        f"/api/v1/collections/{collection}/search",
                        json={"vector": source.vectors[n // 2].tolist(), "top_k": 1},
                    ).json()
                    assert probe["results"][0]["id"] == f"doc-{n // 2}", probe
                    info = _wait(
                        client,
                        f"/api/v1/collections/{collection}",
                        lambda b: (
                            b["index"]["status"] in ("ready", "failed")
                            or b["vector_count"] < b["index"]["build_threshold"]
                        ),
                    )
                    index_s = time.perf_counter() - started if info["index"]["status"] == "ready" else None
                    again_started = time.perf_counter()
                    again = client.post(f"/api/v1/collections/{collection}/imports", json=body).json()
                    cached = _wait(
                        client,
                        f"/api/v1/imports/{again['import_id']}",
                        lambda b: b["status"] != "pending" and b["status"] != "loading",
                    )
                    cached_s = time.perf_counter() - again_started
                    assert cached["cached"] is True, cached
                    results["sizes"][str(n)] = {
                        "vectors": status["vectors_loaded"],
                        "loaded_s": round(loaded_s, 3),
                        "server_duration_ms": status["duration_ms"],
                        "index_ready_s": round(index_s, 2)
                        if index_s is not None
                        else "below index_threshold",
                        "cached_reimport_ms": round(cached_s * 1000, 1),
                        "portal_bytes": sum(len(v) for v in source.files.values()),
                    }
                    if not args.json:
                        print(f"{n:>7} vectors: {results['sizes'][str(n)]}", flush=True)
            results["server_idle_rss_mib"] = round(idle_kib / 1024, 1)
            results["server_peak_rss_mib"] = round(_peak_kib(target.pid) / 1024, 1)
            workers = _decode_workers(target.pid)
            results["worker_peak_rss_mib"] = [round(_peak_kib(p) / 1024, 1) for p in workers]
            # The issue's memory target: everything the import added, over the vectors' own bytes
            # (float32) of the largest database.
            above_idle_kib = _peak_kib(target.pid) - idle_kib + sum(_peak_kib(p) for p in workers)
            results["peak_above_idle_mib"] = round(above_idle_kib / 1024, 1)
            results["peak_above_idle_over_vector_bytes"] = round(
                above_idle_kib * 1024 / (max(sizes) * args.dim * 4), 2
            )
        finally:
            target.cleanup()
    print_result(results, as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
