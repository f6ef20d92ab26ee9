"""Per-request cost of cluster mode's request path, measured against real server processes.

1. auth + rate limit + metering with a cached key: /api/v1/me with a tenant key (bearer parsing,
   cache lookup, both request windows counted, the request metered) against /healthz, the
   unauthenticated trivial route that skips all of it. Rate limiting is on, with limits high
   enough never to refuse. `--storage redis://127.0.0.1:6379/15` counts in Redis instead of memory.
2. a HiveHub validation on a cache miss: /api/v1/me with a key the server has never seen (so it
   asks a HiveHub stand-in that answers after `--hub-delay-ms`), against the hub's own latency
   measured directly from this process, and against the same route with a cached key.

    python -m tests.bench.cluster_overhead [--requests 4000] [--misses 300] [--hub-delay-ms 20]
                                           [--storage memory://] [--json]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time

import httpx

from service.bench import print_result, start_temporary_server
from tests.fake_hivehub import API_KEY, FakeHub, serve


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _timed(client: httpx.Client, method: str, path: str, **kwargs: object) -> float:
    started = time.perf_counter()
    response = client.request(method, path, **kwargs)  # type: ignore[arg-type]
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.text
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=4000, help="requests per variant (cached key)")
    parser.add_argument("--misses", type=int, default=300, help="requests with a never-seen HiveHub key")
    parser.add_argument("--hub-delay-ms", type=float, default=20.0, help="the HiveHub stand-in's latency")
    parser.add_argument("--storage", default="memory://", help="rate_limiting.storage_uri")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    result: dict[str, float | int | str] = {"requests_per_variant": args.requests, "storage": args.storage}
    with serve(FakeHub()) as hub:
        target = start_temporary_server(
            {
                "VECTORHIVE_RATE_LIMITING__ENABLED": "true",
                "VECTORHIVE_RATE_LIMITING__STORAGE_URI": args.storage,
                "VECTORHIVE_RATE_LIMITING__DEFAULT_REQUESTS_PER_MINUTE": "100000000",
                "VECTORHIVE_RATE_LIMITING__DEFAULT_REQUESTS_PER_HOUR": "100000000",
                "VECTORHIVE_CLUSTER__ENABLED": "true",
                "VECTORHIVE_CLUSTER__HIVEHUB_API_URL": hub.url,
                "HIVEHUB_API_KEY": API_KEY,
            },
            permission="read_only",
        )
        try:
            with httpx.Client(base_url=target.url, timeout=10) as client:
                cached = {"Authorization": f"Bearer {target.key}"}
                variants = {"healthz_unauthenticated": {}, "me_cached_key_limited_metered": cached}
                paths = {"healthz_unauthenticated": "/healthz", "me_cached_key_limited_metered": "/api/v1/me"}
                samples: dict[str, list[float]] = {name: [] for name in variants}
                for _ in range(200):
                    for name, headers in variants.items():
                        _timed(client, "GET", paths[name], headers=headers)
                for _ in range(args.requests):
                    for name, headers in variants.items():
                        samples[name].append(_timed(client, "GET", paths[name], headers=headers))
                for name, values in samples.items():
                    result[f"{name}_p50_ms"] = round(statistics.median(values), 4)
                    result[f"{name}_p99_ms"] = round(_p(values, 0.99), 4)
                result["cluster_path_overhead_p50_ms"] = round(
                    float(result["me_cached_key_limited_metered_p50_ms"])
                    - float(result["healthz_unauthenticated_p50_ms"]),
                    4,
                )

                # Cache misses through HiveHub: one tenant, a new key for every request.
                hub.delay = args.hub_delay_ms / 1000
                keys = ["hh_" + secrets.token_urlsafe(24) for _ in range(args.misses + 20)]
                for key in keys:
                    hub.add_key(key, "bench-hub", permission="read_only")
                with httpx.Client(
                    base_url=hub.url, timeout=10, headers={"Authorization": f"Bearer {API_KEY}"}
                ) as h:
                    direct = [
                        _timed(h, "POST", "/api/v1/keys/validate", json={"key": keys[0]})
                        for _ in range(args.misses)
                    ]
                misses, hits = [], []
                for i, key in enumerate(keys):
                    elapsed = _timed(client, "GET", "/api/v1/me", headers={"Authorization": f"Bearer {key}"})
                    if i >= 20:  # the first ones create the tenant and warm the hub connection pool
                        misses.append(elapsed)
                        hits.append(_timed(client, "GET", "/api/v1/me", headers=cached))
                result["hub_direct_p50_ms"] = round(statistics.median(direct), 4)
                result["me_hub_miss_p50_ms"] = round(statistics.median(misses), 4)
                result["me_hub_miss_p99_ms"] = round(_p(misses, 0.99), 4)
                result["me_cached_p50_ms_same_run"] = round(statistics.median(hits), 4)
                result["hub_miss_added_over_hub_latency_p50_ms"] = round(
                    statistics.median(misses) - statistics.median(hits) - statistics.median(direct), 4
                )
        finally:
            target.cleanup()
    print_result(result, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
