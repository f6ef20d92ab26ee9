"""Prometheus metrics, in the process-wide registry that prometheus_client exposes."""

from __future__ import annotations

from prometheus_client import Counter

AUTH_CACHE_HITS = Counter("vectorhive_auth_cache_hits_total", "API keys answered from the verified-key cache")
AUTH_CACHE_MISSES = Counter(
    "vectorhive_auth_cache_misses_total", "API keys not in the verified-key cache (looked up in the database)"
)
AUTH_HASH_CHECKS = Counter(
    "vectorhive_auth_hash_checks_total", "argon2id verifications of API key secrets (cache misses only)"
)
AUTH_FAILURES = Counter("vectorhive_auth_failures_total", "Rejected credentials, by reason", ["reason"])
