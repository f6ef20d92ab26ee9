"""Configuration: defaults, config.yml, VECTORHIVE_<SECTION>__<KEY> overrides and clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.config import ConfigError, load_settings

REPO = Path(__file__).resolve().parent.parent


def test_defaults_without_a_file(tmp_path: Path) -> None:
    settings = load_settings(environ={}, cwd=tmp_path)
    assert settings.server.port == 8000
    assert settings.database.url is None
    assert settings.database.data_dir == str(tmp_path / "data" / "postgres")
    assert settings.auth.require_authentication is True
    assert settings.auth.api_key_cache_ttl == 300
    assert settings.cluster.enabled is False
    assert settings.rate_limiting.default_requests_per_minute == 1000
    assert settings.rate_limiting.default_requests_per_hour == 10000


def test_shipped_config_matches_built_in_defaults(tmp_path: Path) -> None:
    """config.yml documents every option with its default: loading it changes nothing."""
    shipped = load_settings(REPO / "config.yml", environ={}, cwd=tmp_path)
    assert shipped == load_settings(environ={}, cwd=tmp_path)
    text = (REPO / "config.yml").read_text()
    for section in shipped.__struct_fields__:
        for option in getattr(shipped, section).__struct_fields__:
            assert f"  {option}:" in text, f"config.yml does not document {section}.{option}"


def test_reads_config_yml_from_working_directory(tmp_path: Path) -> None:
    (tmp_path / "config.yml").write_text("server:\n  port: 9123\ndatabase:\n  data_dir: here/pg\n")
    settings = load_settings(environ={}, cwd=tmp_path)
    assert settings.server.port == 9123
    assert settings.database.data_dir == str(tmp_path / "here" / "pg")


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("server:\n  port: 9123\n")
    settings = load_settings(
        path,
        environ={
            "VECTORHIVE_SERVER__PORT": "8080",
            "VECTORHIVE_DATABASE__URL": "postgresql://u@db.example/vh",
            "VECTORHIVE_AUTH__REQUIRE_AUTHENTICATION": "false",
            "VECTORHIVE_AUTH__DEFAULT_TENANT_ID": "007",
            "VECTORHIVE_RATE_LIMITING__DEFAULT_REQUESTS_PER_MINUTE": "50",
        },
        cwd=tmp_path,
    )
    assert settings.server.port == 8080
    assert settings.database.url == "postgresql://u@db.example/vh"
    assert settings.auth.require_authentication is False
    assert settings.auth.default_tenant_id == "007"  # text options stay text
    assert settings.rate_limiting.default_requests_per_minute == 50


def test_environment_interpolation_in_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yml"
    path.write_text("database:\n  url: ${PGURL}\n  data_dir: ${NOPE:-fallback/pg}\n")
    monkeypatch.setenv("PGURL", "postgresql://x@y/z")
    settings = load_settings(path, environ={}, cwd=tmp_path)
    assert settings.database.url == "postgresql://x@y/z"
    assert settings.database.data_dir == str(tmp_path / "fallback" / "pg")


@pytest.mark.parametrize(
    ("yaml_text", "environ", "message"),
    [
        ("server:\n  port: eighty\n", {}, "server.port"),
        ("server:\n  port: 70000\n", {}, "server.port"),
        ("server:\n  prot: 80\n", {}, "server.prot: unknown option"),
        ("servr:\n  port: 80\n", {}, "servr: unknown configuration section"),
        ("server: 8080\n", {}, "server: must be a mapping"),
        ("auth:\n  api_key_cache_ttl: -1\n", {}, "auth.api_key_cache_ttl"),
        ("server:\n  log_level: loud\n", {}, "server.log_level"),
        ("database:\n  url: mysql://x\n", {}, "database.url"),
        ("database:\n  pool_min_size: 20\n  pool_max_size: 5\n", {}, "database.pool_min_size"),
        (
            "cluster:\n  enabled: true\nauth:\n  require_authentication: false\n",
            {},
            "auth.require_authentication",
        ),
        ("database:\n  url: ${MISSING_VAR}\n", {}, "MISSING_VAR"),
        ("cluster:\n  hivehub_api_url: ftp://hub\n", {}, "cluster.hivehub_api_url"),
        ("quotas:\n  max_vectors: -1\n", {}, "quotas.max_vectors"),
        ("rate_limiting:\n  token_refill_per_second: 0\n", {}, "rate_limiting.token_refill_per_second"),
        ("rate_limiting:\n  storage_uri: memcached://x\n", {}, "rate_limiting.storage_uri"),
        ("[1, 2]\n", {}, "top level must be a mapping"),
        ("server: {port: [\n", {}, "not valid YAML"),
        ("", {"VECTORHIVE_SERVER__PORT": "abc"}, "server.port (from VECTORHIVE_SERVER__PORT)"),
        (
            "",
            {"VECTORHIVE_SERVER__NOPE": "1"},
            "VECTORHIVE_SERVER__NOPE: section 'server' has no option 'nope'",
        ),
        ("", {"S5_MAX_PARALLEL_CHUNKS": "0"}, "s5.max_parallel_chunks (from S5_MAX_PARALLEL_CHUNKS)"),
        ("s5:\n  portal_url: ftp://portal\n", {}, "s5.portal_url"),
        (
            "",
            {"VECTORHIVE_NOPE__PORT": "1"},
            "VECTORHIVE_NOPE__PORT: there is no configuration section 'nope'",
        ),
    ],
)
def test_invalid_configuration_names_the_option(
    tmp_path: Path, yaml_text: str, environ: dict[str, str], message: str
) -> None:
    path = tmp_path / "c.yml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, environ=environ, cwd=tmp_path)
    assert message in str(excinfo.value)


def test_seed_environment_names_for_s5(tmp_path: Path) -> None:
    seed = {
        "S5_PORTAL_URL": "http://127.0.0.1:5524",
        "S5_MAX_PARALLEL_CHUNKS": "4",
        "S5_DOWNLOAD_TIMEOUT_SECONDS": "12.5",
        "S5_LOADING_TIMEOUT_MINUTES": "2",
    }
    s5 = load_settings(environ=seed, cwd=tmp_path).s5
    assert (
        s5.portal_url,
        s5.max_parallel_chunks,
        s5.download_timeout_seconds,
        s5.loading_timeout_minutes,
    ) == (
        "http://127.0.0.1:5524",
        4,
        12.5,
        2,
    )
    # Our own name wins when both are set.
    both = {**seed, "VECTORHIVE_S5__PORTAL_URL": "https://s5.example"}
    assert load_settings(environ=both, cwd=tmp_path).s5.portal_url == "https://s5.example"


def test_explicit_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_settings(tmp_path / "absent.yml", environ={}, cwd=tmp_path)


def test_cli_stops_with_a_clear_message_on_bad_configuration(tmp_path: Path) -> None:
    (tmp_path / "config.yml").write_text("server:\n  port: eighty\n")
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "configuration error: server.port" in result.stderr
    assert "Traceback" not in result.stderr


def test_hivehub_settings_and_the_hivehub_api_key_variable(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("cluster:\n  enabled: true\n  hivehub_api_url: https://hub.example\n")
    settings = load_settings(path, environ={"HIVEHUB_API_KEY": "from-env"}, cwd=tmp_path)
    assert settings.cluster.hivehub_api_url == "https://hub.example"
    assert settings.cluster.hivehub_api_key == "from-env"
    explicit = load_settings(
        path,
        environ={"HIVEHUB_API_KEY": "from-env", "VECTORHIVE_CLUSTER__HIVEHUB_API_KEY": "own"},
        cwd=tmp_path,
    )
    assert explicit.cluster.hivehub_api_key == "own"


def test_rate_limits_follow_cluster_mode_unless_set(tmp_path: Path) -> None:
    lone = load_settings(environ={}, cwd=tmp_path)
    assert lone.rate_limiting.enabled is None and not lone.rate_limits_enabled
    cluster = load_settings(
        environ={"VECTORHIVE_CLUSTER__ENABLED": "true", "VECTORHIVE_CLUSTER__HIVEHUB_API_URL": "http://hub"},
        cwd=tmp_path,
    )
    assert cluster.rate_limits_enabled
    forced_off = load_settings(
        environ={"VECTORHIVE_CLUSTER__ENABLED": "true", "VECTORHIVE_RATE_LIMITING__ENABLED": "false"},
        cwd=tmp_path,
    )
    assert not forced_off.rate_limits_enabled
    forced_on = load_settings(environ={"VECTORHIVE_RATE_LIMITING__ENABLED": "true"}, cwd=tmp_path)
    assert forced_on.rate_limits_enabled
