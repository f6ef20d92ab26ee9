"""Background jobs of this process, with what health reports about them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import msgspec

log = logging.getLogger("vectorhive.jobs")


class JobStatus(msgspec.Struct, kw_only=True):
    name: str
    running: bool
    interval_seconds: float
    last_success_at: datetime | None = None
    last_error: str | None = None


class BackgroundJobs:
    """Periodic jobs: `step` every `interval` seconds; a failing step is logged and tried again."""

    def __init__(self) -> None:
        self._stopping = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._status: dict[str, JobStatus] = {}

    def start(self, name: str, interval: float, step: Callable[[], Awaitable[object]]) -> None:
        if not self._tasks:
            self._stopping.clear()  # started again after a stop (an app's lifespan run twice)
        status = self._status[name] = JobStatus(name=name, running=True, interval_seconds=interval)

        async def loop() -> None:
            while True:
                # Sleep until the next run or until stop(); a run in progress is never cancelled
                # by stop() (a flush cut in half could lose what it had taken out of memory).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=interval)
                if self._stopping.is_set():
                    return
                try:
                    await step()
                except Exception as exc:
                    status.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("background job failed", extra={"job": name}, exc_info=True)
                else:
                    status.last_success_at, status.last_error = datetime.now(UTC), None

        self._tasks[name] = asyncio.create_task(loop(), name=name)

    def status(self) -> list[JobStatus]:
        for name, task in self._tasks.items():
            self._status[name].running = not task.done()
        return list(self._status.values())

    async def stop(self, grace: float = 10.0) -> set[asyncio.Task[None]]:
        """Let running steps finish (up to `grace` seconds), then cancel what is left.

        Returns the cancelled steps that have not ended `grace` seconds later either: a statement
        cancelled on a database that answers nothing waits for it (the caller ends them by
        closing the database's connections)."""
        self._stopping.set()
        stuck: set[asyncio.Task[None]] = set()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks.values(), timeout=grace)
            for task in late:
                task.cancel()
            if late:
                _, stuck = await asyncio.wait(late, timeout=grace)
        self._tasks.clear()
        return stuck
