"""Prometheus metrics, in the process-wide registry that prometheus_client exposes."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

AUTH_CACHE_HITS = Counter("vectorhive_auth_cache_hits_total", "API keys answered from the verified-key cache")
AUTH_CACHE_MISSES = Counter(
    "vectorhive_auth_cache_misses_total", "API keys not in the verified-key cache (looked up in the database)"
)
AUTH_HASH_CHECKS = Counter(
    "vectorhive_auth_hash_checks_total", "argon2id verifications of API key secrets (cache misses only)"
)
AUTH_FAILURES = Counter("vectorhive_auth_failures_total", "Rejected credentials, by reason", ["reason"])

INDEX_BUILD_SECONDS = Histogram(
    "vector_index_build_duration_seconds",
    "Time to build a collection's HNSW index (CREATE INDEX CONCURRENTLY)",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
INDEX_BUILDS = Counter("vectorhive_index_builds_total", "HNSW index builds, by outcome", ["outcome"])
