"""Three `vectorhive serve` replicas on one PostgreSQL (the embedded one, shared by all three) and
the local Redis, with traffic spread over them.

1. Shared limits: a tenant limited to --limit requests a minute sends 3x that over the three
   replicas; the total allowed should equal the limit.
2. Revocation: a key used (and so cached) on every replica is revoked through replica 0; the time
   until replicas 1 and 2 refuse it (polled every 5 ms), over --revocations trials.
3. Throughput of /api/v1/me (auth, rate limit, metering) with 32 concurrent clients, on one replica
   and spread over three (on a 2-core machine three processes share the same two cores).

    python -m tests.bench.three_replicas [--limit 300] [--revocations 20] [--requests 3000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from service.bench import print_result
from tests.support.server import ServerProcess, vectorhive_cli

REDIS = "redis://127.0.0.1:6379/14"


async def spread(urls: list[str], key: str, n: int, concurrency: int = 32) -> tuple[dict[int, int], float]:
    counts: dict[int, int] = {}
    slots = asyncio.Semaphore(concurrency)
    clients = [httpx.AsyncClient(base_url=u, headers={"Authorization": f"Bearer {key}"}) for u in urls]

    async def one(i: int) -> None:
        async with slots:
            status = (await clients[i % len(clients)].get("/api/v1/me")).status_code
            counts[status] = counts.get(status, 0) + 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        for client in clients:
            await client.aclose()
    return counts, time.perf_counter() - started


def key_for(workdir: Path, env: dict[str, str], tenant: str) -> str:
    made = vectorhive_cli("keys", "create", "--tenant", tenant, "--permission", "admin", cwd=workdir, env=env)
    return made.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--revocations", type=int, default=20)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="vectorhive-bench3-"))
    env = {
        "VECTORHIVE_SERVER__ACCESS_LOG": "false",
        "VECTORHIVE_SERVER__LOG_LEVEL": "warning",
        "VECTORHIVE_RATE_LIMITING__STORAGE_URI": REDIS,
        "VECTORHIVE_RATE_LIMITING__DEFAULT_REQUESTS_PER_MINUTE": "100000000",
        "VECTORHIVE_RATE_LIMITING__DEFAULT_REQUESTS_PER_HOUR": "100000000",
        "VECTORHIVE_RATE_LIMITING__TOKEN_BUCKET_CAPACITY": "100000000",
    }
    vectorhive_cli("tenants", "create", "bench", cwd=workdir, env=env)
    vectorhive_cli("tenants", "create", "limited", cwd=workdir, env=env)
    # All three attach to one embedded PostgreSQL; their logs are server-<port>.log in workdir.
    replicas = [ServerProcess(workdir, env=env, ready_seconds=120) for _ in range(3)]
    urls = [replica.base for replica in replicas]
    result: dict[str, float | int | str] = {}
    try:
        # 1. one shared window
        limited = key_for(workdir, env, "limited")
        operator = vectorhive_cli("keys", "create", "--operator", cwd=workdir, env=env).stdout.strip()
        quotas = httpx.put(
            f"{urls[0]}/api/v1/admin/tenants/limited/quotas",
            json={"requests_per_minute": args.limit},
            headers={"Authorization": f"Bearer {operator}"},
        )
        assert quotas.status_code == 200, quotas.text
        counts, _ = asyncio.run(spread(urls, limited, 3 * args.limit))
        result["limit_per_minute"] = args.limit
        result["allowed_over_3_replicas"] = counts.get(200, 0)
        result["refused_429"] = counts.get(429, 0)

        # 2. revocation reaching the other replicas
        delays: list[float] = []
        for _ in range(args.revocations):
            key = key_for(workdir, env, "bench")
            headers = {"Authorization": f"Bearer {key}"}
            for url in urls:
                assert httpx.get(url + "/api/v1/me", headers=headers).status_code == 200
            key_id = key.split("_")[1]
            started = time.perf_counter()
            assert httpx.delete(f"{urls[0]}/api/v1/keys/{key_id}", headers=headers).status_code in (200, 204)
            pending = set(urls[1:])
            while pending:
                for url in list(pending):
                    if httpx.get(url + "/api/v1/me", headers=headers).status_code == 401:
                        pending.discard(url)
                if time.perf_counter() - started > 10:
                    raise SystemExit("a revoked key still worked after 10 s")
                time.sleep(0.005)
            delays.append((time.perf_counter() - started) * 1000)
        result["revocation_to_all_replicas_ms_p50"] = round(statistics.median(delays), 1)
        result["revocation_to_all_replicas_ms_max"] = round(max(delays), 1)

        # 3. throughput
        bench = key_for(workdir, env, "bench")
        for label, targets in (("one_replica", urls[:1]), ("three_replicas", urls)):
            counts, seconds = asyncio.run(spread(targets, bench, args.requests))
            assert set(counts) == {200}, counts
            result[f"me_rps_{label}"] = round(args.requests / seconds)
    finally:
        for replica in replicas:
            replica.end()
        shutil.rmtree(workdir, ignore_errors=True)
    print_result(result, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
