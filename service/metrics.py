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

# S5 imports (names from the planning documents).
S5_DOWNLOAD_SECONDS = Histogram(
    "s5_download_duration_seconds",
    "Time to download one file (manifest or chunk) from the S5 portal, retries included",
    ["kind"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
S5_DOWNLOAD_ERRORS = Counter(
    "s5_download_errors_total", "Failed download attempts from the S5 portal, by reason", ["reason"]
)
S5_VECTORS_LOADED = Counter("s5_vectors_loaded_total", "Vectors committed into collections by S5 imports")
IMPORT_CACHE_HITS = Counter(
    "vector_index_cache_hits_total",
    "Imports that found the same manifest already loaded into the unchanged collection",
)
IMPORT_CACHE_MISSES = Counter(
    "vector_index_cache_misses_total", "Imports that had to download and load their chunks"
)
IMPORTS_FINISHED = Counter("vectorhive_imports_total", "Finished imports, by final status", ["status"])
