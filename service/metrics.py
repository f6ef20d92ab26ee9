"""Prometheus metrics, in the process-wide registry that prometheus_client exposes.

With server.workers > 1 they are summed over the worker processes (prometheus_client's
multiprocess mode, service/workers.py): each gauge says how its workers' values combine.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


def exposition_registry() -> CollectorRegistry:
    """What /metrics shows: this process's registry, or all workers' figures in multiprocess mode."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


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

# -- per tenant (labels: tenant ids and operation ids, both bounded by what exists; never raw paths)
TENANT_REQUESTS = Counter(
    "vectorhive_tenant_requests_total",
    "Requests of a tenant that passed its rate limits",
    ["tenant_id", "operation"],
)
TENANT_STORAGE_BYTES = Gauge(
    "vectorhive_tenant_storage_bytes",
    "Bytes on disk of a tenant's vector tables (at scrape time)",
    ["tenant_id"],
    multiprocess_mode="mostrecent",
)
TENANT_RATE_LIMITED = Counter(
    "vectorhive_tenant_rate_limit_exceeded_total", "Requests refused with 429", ["tenant_id"]
)
TENANT_QUOTA_EXCEEDED = Counter(
    "vectorhive_tenant_quota_exceeded_total",
    "Writes refused with 403 quota_exceeded",
    ["tenant_id", "quota_type"],
)
RATE_LIMIT_STORAGE_ERRORS = Counter(
    "vectorhive_rate_limit_storage_errors_total",
    "Rate-limit checks that could not reach their storage (the request was let through)",
)

# -- requests (label: the route template, never the raw path)
REQUEST_SECONDS = Histogram(
    "vectorhive_http_request_duration_seconds",
    "Time from the request's arrival to its last response byte",
    ["method", "route", "status_class"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# -- HiveHub
HUB_SECONDS = Histogram(
    "vectorhive_hivehub_request_duration_seconds",
    "HiveHub calls, by endpoint",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HUB_ERRORS = Counter("vectorhive_hivehub_errors_total", "Failed HiveHub calls", ["endpoint", "kind"])
HUB_UP = Gauge(
    "vectorhive_hivehub_up",
    "1 if the last HiveHub call succeeded, 0 if it failed",
    multiprocess_mode="mostrecent",
)

# -- usage
USAGE_REPORTED = Counter("vectorhive_usage_rows_reported_total", "Usage outbox rows acknowledged by HiveHub")
USAGE_UNREPORTED = Gauge(
    "vectorhive_usage_rows_unreported",
    "Usage outbox rows not yet acknowledged",
    multiprocess_mode="mostrecent",
)

# -- models (label: the configured model name, bounded by config)
MODEL_QUEUE_TEXTS = Gauge(
    "vectorhive_model_queue_texts",
    "Texts waiting for (or being embedded by) a model",
    ["model"],
    multiprocess_mode="livesum",
)
MODEL_EMBEDDINGS = Counter("vectorhive_model_embeddings_total", "Texts embedded, by model", ["model"])
MODEL_TOKENS = Counter("vectorhive_model_tokens_total", "Tokens embedded, by model", ["model"])
MODEL_BATCH_TEXTS = Histogram(
    "vectorhive_model_batch_texts",
    "Texts in one call to a model (concurrent requests merged)",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
MODEL_CALL_SECONDS = Histogram(
    "vectorhive_model_call_duration_seconds",
    "Time of one call to a model (a micro-batch), by model",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MODEL_REJECTED = Counter(
    "vectorhive_model_rejected_total", "Requests refused by a model's queue, by reason", ["model", "reason"]
)

# -- MCP (labels: tool names and error codes, both fixed sets)
MCP_TOOL_CALLS = Counter(
    "vectorhive_mcp_tool_calls_total",
    "MCP tool calls, by tool and outcome (ok or the error code)",
    ["tool", "outcome"],
)
MCP_TOOL_SECONDS = Histogram(
    "vectorhive_mcp_tool_call_duration_seconds",
    "Time of one MCP tool call, by tool",
    ["tool"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# -- generation (label: the configured chat model name, bounded by config)
GENERATION_REQUESTS_ACTIVE = Gauge(
    "vectorhive_generation_requests_active",
    "Generations admitted to a chat model and not finished (waiting or generating)",
    ["model"],
    multiprocess_mode="livesum",
)
GENERATION_TOKENS = Counter(
    "vectorhive_generation_tokens_total",
    "Tokens of chat models, by kind (prompt, completion)",
    ["model", "kind"],
)
GENERATION_FIRST_TOKEN_SECONDS = Histogram(
    "vectorhive_generation_first_token_seconds",
    "Time from a generation's admission to its first token (queue wait included)",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
GENERATION_SECONDS = Histogram(
    "vectorhive_generation_duration_seconds",
    "Time from a generation's admission to its end, by finish reason",
    ["model", "finish_reason"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
GENERATION_REJECTED = Counter(
    "vectorhive_generation_rejected_total",
    "Generations refused or cut short by a chat model's queue, by reason",
    ["model", "reason"],
)

# -- RAG semantic cache
RAG_CACHE_LOOKUPS = Counter(
    "vectorhive_rag_cache_lookups_total",
    "Semantic cache lookups of RAG answers, by result (hit, miss)",
    ["result"],
)
RAG_CACHE_ENTRIES = Gauge(
    "vectorhive_rag_cache_entries",
    "Answers held in the semantic cache (all tenants; refreshed every minute)",
    multiprocess_mode="mostrecent",
)
RAG_CACHE_STORED = Counter("vectorhive_rag_cache_stored_total", "Answers stored in the semantic cache")
