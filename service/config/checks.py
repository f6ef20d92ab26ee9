"""The checks a value's type cannot make: formats, cross-option rules, models that must exist."""

from __future__ import annotations

import ipaddress
import re

from service.config.errors import ConfigError
from service.config.sections import GenerationSettings, Settings

_TENANT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


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
