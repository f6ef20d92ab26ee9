"""Sessions: creation latency, and what a session token costs per request compared with a key.

Against a real `vectorhive serve` on a temporary embedded database (tenant "bench", an ADMIN key):

- session creation: POST /api/v1/sessions (signing key in memory, one transaction with the
  per-tenant count, the insert and the audit row, an Ed25519 signature), p50/p99;
- per request: GET /api/v1/collections/docs with the ADMIN key (cached) and with a session token
  (cached after its first use), interleaved; the difference is the token's overhead over a key;
- in process (no HTTP): SessionVerifier.authenticate on a cached token (blake2b + pool lookup:
  the target is <= 0.1 ms), and a token's first verification without its database read
  (JWT parse + Ed25519 verify + claims).

    python -m tests.bench.sessions [--sessions 200] [--requests 2000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.bench import print_result, start_temporary_server
from service.config import SessionsSettings
from service.sessions.tokens import Claims, check_claims, check_signature, parse, sign


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _in_process(iterations: int) -> dict[str, float]:
    """Verification costs without HTTP or the database: a cached token and a first verification."""
    from service.auth.keys import KeyKind
    from service.auth.principal import Permission, Principal
    from service.sessions.verifier import SessionVerifier, _Verified

    key = Ed25519PrivateKey.generate()
    now = int(time.time())
    claims = Claims(
        iss="vectorhive",
        aud="vectorhive:session",
        exp=now + 600,
        iat=now,
        jti="ses_bench",
        tid="bench",
        col=["docs"],
        sid="ses_bench",
        pkid="abcdefghijkl",
    )
    token = sign(claims, key, "ed25519-bench")
    public = key.public_key()

    first: list[float] = []
    for _ in range(iterations):
        started = time.perf_counter()
        unverified = parse(token)
        check_signature(unverified, public)
        check_claims(unverified.claims, issuer="vectorhive", kind="session", now=time.time())
        first.append((time.perf_counter() - started) * 1000)

    verifier = SessionVerifier(db=None, settings=SessionsSettings(), keyring=None)  # type: ignore[arg-type]
    principal = Principal(
        kind=KeyKind.TENANT,
        key_id="abcdefghijkl",
        tenant_id="bench",
        permission=Permission.READ_ONLY,
        collections=frozenset({"docs"}),
        session_id="ses_bench",
    )
    from service.auth.keys import fingerprint

    verifier.pool.put(
        "bench",
        fingerprint(token),
        _Verified(
            principal=principal,
            session_id="ses_bench",
            parent_key_id="abcdefghijkl",
            max_queries=None,
            expires=now + 600.0,
        ),
    )
    cached: list[float] = []

    async def run() -> None:
        for _ in range(iterations):
            started = time.perf_counter()
            assert await verifier.authenticate(token) is principal
            cached.append((time.perf_counter() - started) * 1000)

    asyncio.run(run())
    return {
        "cached_token_verify_p50_ms": round(statistics.median(cached), 5),
        "cached_token_verify_p99_ms": round(_percentile(cached, 0.99), 5),
        "first_verify_without_db_p50_ms": round(statistics.median(first), 4),
        "first_verify_without_db_p99_ms": round(_percentile(first, 0.99), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=200, help="sessions to create")
    parser.add_argument("--requests", type=int, default=2000, help="requests per variant")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    result: dict[str, float | int] = {"sessions": args.sessions, "requests_per_variant": args.requests}
    result.update(_in_process(max(args.requests, 1000)))

    target = start_temporary_server({"VECTORHIVE_SESSIONS__MAX_SESSIONS_PER_TENANT": str(args.sessions + 10)})
    try:
        admin = {"Authorization": f"Bearer {target.key}"}
        with httpx.Client(base_url=target.url, timeout=30) as client:
            made = client.post("/api/v1/collections", json={"name": "docs", "dimension": 3}, headers=admin)
            assert made.status_code == 201, made.text
            creation: list[float] = []
            token = ""
            for _ in range(args.sessions):
                started = time.perf_counter()
                response = client.post("/api/v1/sessions", json={"collections": ["docs"]}, headers=admin)
                creation.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 201, response.text
                token = response.json()["token"]
            session = {"Authorization": f"Bearer {token}"}
            variants = {"with_cached_key": admin, "with_cached_session_token": session}
            samples: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(100):  # warm-up: both credentials verified and cached
                for headers in variants.values():
                    assert client.get("/api/v1/collections/docs", headers=headers).status_code == 200
            for _ in range(args.requests):
                for name, headers in variants.items():
                    started = time.perf_counter()
                    response = client.get("/api/v1/collections/docs", headers=headers)
                    samples[name].append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200
    finally:
        target.cleanup()

    result["session_create_p50_ms"] = round(statistics.median(creation), 3)
    result["session_create_p99_ms"] = round(_percentile(creation, 0.99), 3)
    for name, values in samples.items():
        result[f"get_collection_{name}_p50_ms"] = round(statistics.median(values), 4)
        result[f"get_collection_{name}_p99_ms"] = round(_percentile(values, 0.99), 4)
    result["session_token_overhead_over_key_p50_ms"] = round(
        float(result["get_collection_with_cached_session_token_p50_ms"])
        - float(result["get_collection_with_cached_key_p50_ms"]),
        4,
    )
    print_result(result, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
