"""Loading: built-in defaults, then config.yml (with ${VAR} interpolation), then
VECTORHIVE_<SECTION>__<KEY> variables, then the semantic checks.

Loading never half succeeds: any problem raises ConfigError naming the option (and where its value
came from).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from service.config.checks import _check_semantics
from service.config.errors import ConfigError
from service.config.sections import Settings, _Section

ENV_PREFIX = "VECTORHIVE_"
DEFAULT_CONFIG_FILE = "config.yml"

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
