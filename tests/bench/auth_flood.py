"""What an unauthenticated argon2 flood costs legitimate clients: the latency of a new key's first
request (one argon2 verification) and of a cached key, without and with 48 attacker connections.

Starts `vectorhive serve` on a temporary embedded database, on 127.0.0.1 only, behind a pretend
reverse proxy: `server.trusted_proxies: [127.0.0.1]`, and every request carries X-Forwarded-For,
so that attacker and victim are different client addresses as they are in the wild (on one
address, the per-address limit would refuse the victim's new keys too: that is the limit working).

Attacks, each for --seconds, from a separate process (so the victim's timings are not the
attacker's event loop), 48 keep-alive connections sending GET /api/v1/me as fast as answered:
  - one_key_id: one real key id (the attacker's own) with a fresh random secret every time, from
    one address: the attack of the red-team run;
  - many_key_ids: 48 key ids the attacker created for itself (an ADMIN may), one per connection,
    each from its own address: the most argon2 work the per-key-id and per-address limits allow.
Meanwhile the victim, from its own address, sends the first request of a fresh key now and then
and requests with a cached key in between.

    python -m tests.bench.auth_flood [--seconds 12] [--connections 48] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import secrets
import statistics
import sys
import time
from typing import Any

import httpx

from service.bench import print_result, start_temporary_server

VICTIM = "203.0.113.1"


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _wrong(key_id: str) -> str:
    return f"vh_{key_id}_{secrets.token_urlsafe(32)}"


async def _attack(url: str, key_ids: list[str], addresses: list[str], seconds: float) -> dict[str, int]:
    counts: dict[str, int] = {}
    deadline = time.monotonic() + seconds

    async def connection(key_id: str, address: str) -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:
            while time.monotonic() < deadline:
                headers = {"Authorization": f"Bearer {_wrong(key_id)}", "X-Forwarded-For": address}
                try:
                    status = str((await http.get("/api/v1/me", headers=headers)).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                counts[status] = counts.get(status, 0) + 1

    await asyncio.gather(*(connection(k, a) for k, a in zip(key_ids, addresses, strict=True)))
    return counts


def _attacker(url: str, key_ids: list[str], addresses: list[str], seconds: float, out: Any) -> None:
    out.put(asyncio.run(_attack(url, key_ids, addresses, seconds)))


def _victim(
    http: httpx.Client, cached_key: str, fresh_keys: list[str], seconds: float
) -> dict[str, list[float]]:
    """Fresh keys' first requests spread over `seconds`, cached-key requests in between."""
    first: list[float] = []
    cached: list[float] = []
    statuses: dict[int, int] = {}
    pause = seconds / (len(fresh_keys) + 1)
    for key in fresh_keys:
        round_end = time.monotonic() + pause
        started = time.perf_counter()
        response = http.get(
            "/api/v1/me", headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": VICTIM}
        )
        first.append((time.perf_counter() - started) * 1000)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        for n in itertools.count():
            # At least a few cached requests per round, however long the first request took.
            if n >= 5 and time.monotonic() >= round_end:
                break
            started = time.perf_counter()
            response = http.get(
                "/api/v1/me", headers={"Authorization": f"Bearer {cached_key}", "X-Forwarded-For": VICTIM}
            )
            cached.append((time.perf_counter() - started) * 1000)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            time.sleep(0.02)
    if set(statuses) != {200}:
        raise SystemExit(f"the victim was refused: {statuses}")
    return {"first": first, "cached": cached}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each phase")
    parser.add_argument("--connections", type=int, default=48, help="attacker connections")
    parser.add_argument("--fresh-keys", type=int, default=8, help="new keys the victim uses per phase")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    target = start_temporary_server({"VECTORHIVE_SERVER__TRUSTED_PROXIES": "[127.0.0.1]"}, permission="admin")
    result: dict[str, Any] = {"connections": args.connections, "seconds_per_phase": args.seconds}
    try:
        with httpx.Client(base_url=target.url, timeout=60, headers={"X-Forwarded-For": VICTIM}) as http:
            admin = {"Authorization": f"Bearer {target.key}"}

            def create_keys(n: int, permission: str) -> list[str]:
                made = []
                for _ in range(n):
                    response = http.post("/api/v1/keys", json={"permission": permission}, headers=admin)
                    response.raise_for_status()
                    made.append(response.json()["key"])
                return made

            cached_key = create_keys(1, "read_only")[0]
            assert (
                http.get("/api/v1/me", headers={"Authorization": f"Bearer {cached_key}"}).status_code == 200
            )
            attacker_ids = [k.split("_")[1] for k in create_keys(args.connections, "read_only")]
            phases = {
                "no_flood": None,
                "one_key_id": ([attacker_ids[0]] * args.connections, ["198.51.100.1"] * args.connections),
                "many_key_ids": (attacker_ids, [f"198.51.100.{i + 1}" for i in range(args.connections)]),
            }
            context = multiprocessing.get_context("spawn")
            for name, attack in phases.items():
                fresh = create_keys(args.fresh_keys, "read_only")
                process = None
                queue = context.Queue()
                if attack is not None:
                    process = context.Process(
                        target=_attacker, args=(target.url, attack[0], attack[1], args.seconds, queue)
                    )
                    process.start()
                    time.sleep(1.0)  # the flood is running before the victim starts
                timings = _victim(http, cached_key, fresh, args.seconds - (1.0 if attack else 0.0))
                if process is not None:
                    counts = queue.get(timeout=120)
                    process.join(timeout=60)
                    result[f"{name}_attacker_answers"] = counts
                    result[f"{name}_attacker_requests_per_s"] = round(sum(counts.values()) / args.seconds)
                result[f"{name}_new_key_first_request_ms_p50"] = round(statistics.median(timings["first"]), 1)
                result[f"{name}_new_key_first_request_ms_max"] = round(max(timings["first"]), 1)
                result[f"{name}_cached_key_ms_p50"] = round(statistics.median(timings["cached"]), 2)
                result[f"{name}_cached_key_ms_p99"] = round(_percentile(timings["cached"], 0.99), 2)
    finally:
        target.cleanup()
    print_result(result, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
