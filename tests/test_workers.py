"""server.workers: several server processes on one port and one embedded database.

A real `vectorhive serve` with two workers: the parent starts the embedded PostgreSQL once, both
workers answer (each has its own import-runner lease, shown by the cluster health), metrics are
summed over them, and SIGTERM stops everything cleanly, the database included.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from service.config import ConfigError, load_settings
from tests.support.server import ServerProcess
from tests.test_serve import cli, embedded_running, workdir  # noqa: F401 (fixture)


def test_more_workers_with_rate_limits_in_memory_is_refused(tmp_path: Path) -> None:
    environ = {"VECTORHIVE_SERVER__WORKERS": "2", "VECTORHIVE_RATE_LIMITING__ENABLED": "true"}
    with pytest.raises(ConfigError, match=r"rate_limiting.storage_uri: memory:// counts per process"):
        load_settings(environ=environ, cwd=tmp_path)
    # Shared counters, or limits off (the default outside cluster mode), are fine.
    shared = {**environ, "VECTORHIVE_RATE_LIMITING__STORAGE_URI": "redis://r:6379"}
    assert load_settings(environ=shared, cwd=tmp_path).rate_limits_enabled
    assert load_settings(environ={"VECTORHIVE_SERVER__WORKERS": "2"}, cwd=tmp_path).server.workers == 2


@pytest.mark.slow
def test_two_workers_serve_one_embedded_database(workdir: Path) -> None:  # noqa: F811
    data_dir = workdir / "data" / "postgres"
    server = ServerProcess(workdir, env={"VECTORHIVE_SERVER__WORKERS": "2"})
    try:
        operator = {"Authorization": "Bearer " + cli(workdir, "keys", "create", "--operator").stdout.strip()}
        runners: set[int] = set()
        deadline = time.monotonic() + 30
        while len(runners) < 2 and time.monotonic() < deadline:
            # A new connection each time: the kernel hands connections to either worker.
            health = httpx.get(server.base + "/api/v1/cluster/health", headers=operator)
            assert health.status_code == 200, health.text
            assert health.json()["database"]["ok"] is True
            runners.add(health.json()["imports"]["runner_id"])
        assert len(runners) == 2, "only one worker answered"
        metrics = httpx.get(server.base + "/metrics", headers=operator)
        assert metrics.status_code == 200
        # Summed over both workers: every health request above is counted, whichever answered.
        line = next(
            line
            for line in metrics.text.splitlines()
            if line.startswith("vectorhive_http_request_duration_seconds_count")
            and 'route="/api/v1/cluster/health"' in line
        )
        assert float(line.rsplit(" ", 1)[1]) >= 2
    finally:
        server.stop(signal.SIGTERM)
    log = server.log.read_text()
    assert log.count("Application shutdown complete") == 2, log
    assert not embedded_running(data_dir)
