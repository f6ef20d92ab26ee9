"""Change notifications between the processes of one database (PostgreSQL LISTEN/NOTIFY).

A writer calls `await notify(conn, CHANNEL, payload)` inside the transaction that changes a row:
NOTIFY is transactional, so the message goes out exactly when the change commits (never for a
rollback), whichever process made it (a replica, `vectorhive keys revoke`, the API).

Every server process keeps one dedicated listening connection (`NotificationHub`). Subscribers
register a callback per channel, and a reset callback: notifications sent while the connection
was down are lost, so on every (re)connection and on every loss of it the resets run (caches
clear themselves) and, while it is down, `hub.listening` is False (caches must not be trusted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from service.db.connections import ServiceConnection, TenantConnection

log = logging.getLogger("vectorhive.db.notify")

# Channels (PostgreSQL identifiers); payloads are short text (NOTIFY allows < 8000 bytes).
AUTH_CHANNEL = "vectorhive_auth"  # "key:<key id>" | "tenant:<tenant id>"
QUOTA_CHANNEL = "vectorhive_quota"  # "<tenant id>"
# "<tenant id>:<name>", sent by a trigger on `collections` (migration 0008) when a collection is
# dropped, renamed or its index status changes, whoever does it.
COLLECTIONS_CHANNEL = "vectorhive_collections"

# Names the listening connections in pg_stat_activity.
LISTENER_APPLICATION_NAME = "vectorhive-notify"

Callback = Callable[[str], None]


async def notify(conn: TenantConnection | ServiceConnection, channel: str, payload: str) -> None:
    """Queue a notification in conn's transaction; delivered to every listener at COMMIT.

    Either kind of connection: pg_notify reads no table, and what a payload names is an id the
    listeners look up under their own rules."""
    await conn.execute("SELECT pg_notify($1, $2)", channel, payload)


class NotificationHub:
    """One listening connection per process, reconnected after a database restart."""

    def __init__(
        self,
        url: Callable[[], str | None],
        *,
        ping_interval: float = 2.0,
        reconnect_delay: float = 0.2,
        max_reconnect_delay: float = 2.0,
    ) -> None:
        # A callable: the embedded server's URL is known only once it runs.
        self._url = url
        self.ping_interval = ping_interval
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self._subscribers: dict[str, list[Callback]] = {}
        self._resets: list[Callable[[], None]] = []
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._ready = asyncio.Event()
        self.connections = 0  # successful (re)connections, for tests and logs

    @property
    def listening(self) -> bool:
        """True while notifications are being received: caches may be trusted."""
        return self._conn is not None and not self._conn.is_closed()

    def subscribe(self, channel: str, callback: Callback) -> None:
        """callback(payload) for every notification on channel (before start())."""
        self._subscribers.setdefault(channel, []).append(callback)

    def on_reset(self, callback: Callable[[], None]) -> None:
        """callback() whenever notifications may have been missed (connection lost or re-made)."""
        self._resets.append(callback)

    async def start(self, *, wait: float = 5.0) -> None:
        """Start listening; waits up to `wait` s for the first connection (keeps trying after)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="notification-hub")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout=wait)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._disconnect()

    def _reset(self) -> None:
        for callback in self._resets:
            try:
                callback()
            except Exception:
                log.exception("a notification reset callback failed")

    def _dispatch(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        for callback in self._subscribers.get(channel, ()):
            try:
                callback(payload)
            except Exception:
                log.exception("a notification callback failed", extra={"channel": channel})

    async def _connect(self) -> None:
        url = self._url()
        if url is None:
            raise ConnectionError("database not started")
        conn = await asyncpg.connect(
            url, timeout=5, server_settings={"application_name": LISTENER_APPLICATION_NAME}
        )
        try:
            self._lost.clear()
            conn.add_termination_listener(lambda _: self._lost.set())
            for channel in self._subscribers:
                await conn.add_listener(channel, self._dispatch)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self.connections += 1
        # Anything committed before LISTEN took effect was missed: start from empty caches.
        self._reset()
        self._ready.set()

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2)
            if not conn.is_closed():
                conn.terminate()

    async def _run(self) -> None:
        delay = self.reconnect_delay
        while True:
            try:
                await self._connect()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError, ConnectionError):
                log.debug("notification listener could not connect; retrying", exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_reconnect_delay)
                continue
            if self.connections > 1:
                log.info("notification listener reconnected; caches cleared")
            delay = self.reconnect_delay
            await self._watch()
            await self._disconnect()
            self._reset()
            log.warning("notification listener lost its connection; caches bypassed until it is back")

    async def _watch(self) -> None:
        """Return when the connection is gone: closed by the server, or no longer answering."""
        conn = self._conn
        assert conn is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), timeout=self.ping_interval)
            if self._lost.is_set() or conn.is_closed():
                return
            try:
                # A half-open TCP connection reports nothing by itself.
                await conn.fetchval("SELECT 1", timeout=self.ping_interval)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                return
