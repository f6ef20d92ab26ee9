"""Typed settings: built-in defaults, then config.yml, then VECTORHIVE_<SECTION>__<KEY> variables.

Every option is documented with its default in the repository's config.yml. Loading never half
succeeds: any problem raises ConfigError naming the option (and where its value came from).

sections.py: the typed sections and Settings; loading.py: config.yml, ${VAR} interpolation,
the environment overrides and load_settings; checks.py: the checks a type cannot make.
"""

from service.config.errors import ConfigError
from service.config.loading import DEFAULT_CONFIG_FILE, ENV_ALIASES, ENV_PREFIX, load_settings
from service.config.sections import (
    AuthSettings,
    ClusterSettings,
    CollectionsSettings,
    DatabaseSettings,
    DocumentsSettings,
    EmbeddingModelSettings,
    EmbeddingsSettings,
    GenerationModelSettings,
    GenerationSettings,
    IndexBuildsSettings,
    McpSettings,
    MetricsSettings,
    OptionalLimit,
    PositiveInt,
    QuotasSettings,
    RagSettings,
    RateLimitingSettings,
    S5Settings,
    Seconds,
    ServerSettings,
    SessionsSettings,
    Settings,
    UsageSettings,
)

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "ENV_ALIASES",
    "ENV_PREFIX",
    "AuthSettings",
    "ClusterSettings",
    "CollectionsSettings",
    "ConfigError",
    "DatabaseSettings",
    "DocumentsSettings",
    "EmbeddingModelSettings",
    "EmbeddingsSettings",
    "GenerationModelSettings",
    "GenerationSettings",
    "IndexBuildsSettings",
    "McpSettings",
    "MetricsSettings",
    "OptionalLimit",
    "PositiveInt",
    "QuotasSettings",
    "RagSettings",
    "RateLimitingSettings",
    "S5Settings",
    "Seconds",
    "ServerSettings",
    "SessionsSettings",
    "Settings",
    "UsageSettings",
    "load_settings",
]
