"""Per-request cost of authentication with a cached key, measured against a real server.

Starts `vectorhive serve` on a temporary embedded database in single-tenant mode, so that the
same route (/api/v1/me) can be called both without a key (the default tenant, no key lookup) and
with a key (bearer parsing, fast hash, cache lookup, expiry check). /healthz, which skips the
authentication middleware altogether, is measured too. Requests are interleaved so that drift
affects all three alike.

    python -m tests.bench.auth_overhead [--requests 5000] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import httpx

from service.bench import print_result, start_temporary_server


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=5000, help="requests per variant")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    # Single-tenant mode: the same route answers with and without a key.
    target = start_temporary_server(
        {"VECTORHIVE_AUTH__REQUIRE_AUTHENTICATION": "false"}, permission="read_only"
    )
    key = target.key
    try:
        with httpx.Client(base_url=target.url, timeout=10) as client:
            variants = {
                "healthz_no_auth_middleware": ("/healthz", {}),
                "me_without_key": ("/api/v1/me", {}),
                "me_with_cached_key": ("/api/v1/me", {"Authorization": f"Bearer {key}"}),
            }
            samples: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(200):  # warm-up; the first keyed request fills the cache (one argon2 run)
                for path, headers in variants.values():
                    assert client.get(path, headers=headers).status_code == 200
            for _ in range(args.requests):
                for name, (path, headers) in variants.items():
                    started = time.perf_counter()
                    response = client.get(path, headers=headers)
                    samples[name].append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200
    finally:
        target.cleanup()

    result: dict[str, float | int] = {"requests_per_variant": args.requests}
    for name, values in samples.items():
        result[f"{name}_p50_ms"] = round(statistics.median(values), 4)
        result[f"{name}_p99_ms"] = round(_percentile(values, 0.99), 4)
    result["auth_overhead_p50_ms"] = round(
        float(result["me_with_cached_key_p50_ms"]) - float(result["me_without_key_p50_ms"]), 4
    )
    result["auth_overhead_p99_ms"] = round(
        float(result["me_with_cached_key_p99_ms"]) - float(result["me_without_key_p99_ms"]), 4
    )
    print_result(result, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
