"""The import runner's lease, and the sweep that recovers the imports of runners that died.

Each server process holds an advisory lock (LEASE_CLASS, runner id) on a connection of its own
while it lives, and stamps that runner id on the imports it accepts. A sweep, at startup and then
every SWEEP_SECONDS on every replica, ends as error/interrupted the active imports whose runner's
lock is gone: their process died. The encryption key is never stored, so an interrupted import
cannot resume; the client submits it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

import asyncpg

from service.db import Database
from service.imports import store
from service.imports.models import ImportStatus
from service.metrics import IMPORTS_FINISHED

log = logging.getLogger("vectorhive.imports")

LEASE_CLASS = 0x7669  # first key of the runner's advisory lock; the second is its runner id
SWEEP_SECONDS = 30.0


class RunnerLease:
    """This process's runner id, held alive by an advisory lock, and the periodic sweep."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.runner_id = 0
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._retake_task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        await self._take()
        await self.sweep()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="import-sweeper")

    async def _take(self) -> None:
        conn = await self.db.connect()
        while True:
            candidate = random.randint(1, 2**31 - 1)  # noqa: S311 (uniqueness comes from the lock)
            if await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LEASE_CLASS, candidate):
                break
        # A lost lease (database restart) is replaced at once, not at the next sweep: imports
        # accepted meanwhile would carry a dead runner id and be swept as interrupted.
        conn.add_termination_listener(self._lost)
        self._conn, self.runner_id = conn, candidate

    def _lost(self, conn: Any) -> None:
        if self._closing or conn is not self._conn:
            return
        if self._retake_task is None or self._retake_task.done():
            self._retake_task = asyncio.get_running_loop().create_task(self._retake(), name="import-lease")

    async def _retake(self) -> None:
        delay = 0.2
        while not self._closing:
            try:
                await self.lease_id()
                log.info("import runner took a new lease", extra={"runner_id": self.runner_id})
                return
            except Exception:
                await asyncio.sleep(delay)  # the database is still restarting
                delay = min(delay * 2, 5.0)

    async def lease_id(self) -> int:
        """The runner id of a live lease (a new one if the database lost ours)."""
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                await self._take()
        return self.runner_id

    async def sweep(self) -> None:
        # Our lease connection may be gone (a database restart): what we run is being swept by
        # others, and ends consistently (its commit checks its status). Take a new lease.
        await self.lease_id()
        async with self.db.transaction() as conn:
            ended = await store.sweep_orphans(conn, LEASE_CLASS)
        for import_id in ended:
            IMPORTS_FINISHED.labels(ImportStatus.ERROR).inc()
            log.warning("import interrupted: its server stopped", extra={"import_id": str(import_id)})

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self.sweep()
            except Exception:
                log.exception("import sweep failed; retrying later")

    async def stop_sweeping(self) -> None:
        """The first step of shutdown: no new lease, no further sweep."""
        self._closing = True
        for task in (self._retake_task, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def interrupt_own(self) -> None:
        """End this runner's active imports as interrupted (at shutdown, before the lease goes)."""
        async with self.db.transaction() as conn:
            await store.interrupt_runner(conn, self.runner_id)

    async def release(self) -> None:
        """The last step of shutdown: the lock goes with its connection."""
        if self._conn is None:
            return
        if not self.db.unreachable_at_shutdown:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), timeout=5)
        if not self._conn.is_closed():
            self._conn.terminate()
