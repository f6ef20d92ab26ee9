"""The one asyncpg pool, and the embedded server behind it when no database.url is configured."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from pgvector.asyncpg import register_vector

from service.config import DatabaseSettings
from service.db.embedded import EmbeddedPostgres
from service.db.migrate import upgrade_to_head

log = logging.getLogger("vectorhive.db")

# The NOLOGIN role that tenant work runs as; row-level security policies apply to it (migration 0002).
TENANT_ROLE = "vectorhive_tenant"


async def _init_connection(conn: asyncpg.Connection) -> None:
    await register_vector(conn)


class Database:
    """Lifecycle: start() -> (embedded server) -> migrations -> pool; stop() reverses it."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self.embedded: EmbeddedPostgres | None = None
        self.url: str | None = settings.url
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database not started")
        return self._pool

    async def start(self, *, migrate: bool | None = None) -> None:
        if self.url is None:
            self.embedded = EmbeddedPostgres(Path(self.settings.data_dir))
            self.url = await asyncio.to_thread(self.embedded.start)
        try:
            if self.settings.migrate_on_startup if migrate is None else migrate:
                await asyncio.to_thread(upgrade_to_head, self.url)
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=self.settings.pool_min_size,
                max_size=self.settings.pool_max_size,
                command_timeout=self.settings.command_timeout,
                init=_init_connection,
            )
        except BaseException:
            await self._stop_embedded()
            raise

    async def stop(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=10)
            except TimeoutError:
                log.warning("database pool did not close in 10 s; terminating connections")
                pool.terminate()
        await self._stop_embedded()

    async def _stop_embedded(self) -> None:
        if self.embedded is not None:
            embedded, self.embedded = self.embedded, None
            await asyncio.to_thread(embedded.stop)

    async def ping(self) -> None:
        async with self.pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1", timeout=2)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        """One connection in one transaction: the unit of work of a request that writes."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def tenant_transaction(self, tenant_id: str) -> AsyncIterator[Any]:
        """A transaction in one tenant's context: PostgreSQL itself refuses other tenants' rows.

        Sets app.tenant_id and switches to the tenant role for this transaction only (both revert
        at COMMIT or ROLLBACK), so a query that forgets its WHERE still cannot see another tenant.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT set_config('app.tenant_id', $1, true), set_config('role', $2, true)",
                tenant_id,
                TENANT_ROLE,
            )
            yield conn
