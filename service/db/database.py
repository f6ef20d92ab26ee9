"""The one asyncpg pool, and the embedded server behind it when no database.url is configured."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from pgvector.asyncpg import register_vector

from service.config import DatabaseSettings
from service.db.connections import (
    ServiceConnection,
    TenantConnection,
    service_connection,
    set_local,
    settings_sql,
    tenant_context,
)
from service.db.embedded import EmbeddedPostgres
from service.db.migrate import head_revision, known_revisions, upgrade_to_head
from service.db.tenant_reads import TenantReads
from service.db.tenant_transaction import CLEAN_AFTER_COMMIT, TenantTransaction, reset_connection
from service.errors import is_database_outage

log = logging.getLogger("vectorhive.db")

# The NOLOGIN group role of all tenant roles (migration 0002): row-level security on the shared
# `collections` table applies to its members; they have no access to tenants or api_keys.
TENANT_GROUP = "vectorhive_tenant"

# Staging tables for binary COPY, one per connection and vector type (see collections.store.upsert).
# Created by the service's login and granted to the group, so whichever tenant role the connection
# takes on may use them; ON COMMIT DELETE ROWS empties them at the end of every transaction.
_STAGING_TABLES = {"vector": "vh_staging_vector", "halfvec": "vh_staging_halfvec"}

# What graceful shutdown gives one of its last database writes (usage counts, last-used times,
# interrupted imports) and the check that the database still answers. A pod has 30 s in all.
SHUTDOWN_DATABASE_SECONDS = 5.0


def tenant_role_name(database: str, tenant_id: str) -> str:
    """The NOLOGIN role a tenant's transactions run as; unique per database of the cluster."""
    digest = hashlib.sha256(f"{database}:{tenant_id}".encode()).hexdigest()
    return f"vh_t_{digest[:24]}"


async def _init_connection(conn: asyncpg.Connection) -> None:
    await register_vector(conn)
    for vector_type, table in _STAGING_TABLES.items():
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {table} (id text, embedding {vector_type}, metadata jsonb) "
            f"ON COMMIT DELETE ROWS; GRANT ALL ON {table} TO {TENANT_GROUP}"
        )


async def _schema_revision(url: str) -> str | None:
    """The database's Alembic revision; None before the first migration."""
    conn = await asyncpg.connect(url)
    try:
        revision: str | None = await conn.fetchval("SELECT version_num FROM alembic_version")
        return revision
    except asyncpg.UndefinedTableError:
        return None
    finally:
        await conn.close()


class Database:
    """Lifecycle: start() -> (embedded server) -> migrations -> pool; stop() reverses it."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self.embedded: EmbeddedPostgres | None = None
        self.url: str | None = settings.url
        self.database_name = ""
        self._pool: asyncpg.Pool | None = None
        self._supervisor: asyncio.Task[None] | None = None
        # Set when shutdown finds the database unreachable: nothing after that waits for it.
        self.unreachable_at_shutdown = False
        self._overrun: set[asyncio.Future[Any]] = set()
        # Single-statement tenant reads on connections of their own (the common search).
        self.reads = TenantReads(register_vector)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database not started")
        return self._pool

    async def start(self, *, migrate: bool | None = None) -> None:
        self.unreachable_at_shutdown = False
        if self.url is None:
            self.embedded = EmbeddedPostgres(Path(self.settings.data_dir))
            self.url = await asyncio.to_thread(self.embedded.start)
        try:
            if self.settings.migrate_on_startup if migrate is None else migrate:
                await asyncio.to_thread(upgrade_to_head, self.url)
            else:
                await self._wait_for_schema(self.url)
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=self.settings.pool_min_size,
                max_size=self.settings.pool_max_size,
                command_timeout=self.settings.command_timeout,
                init=_init_connection,
                reset=reset_connection,
            )
            self.database_name = await self._pool.fetchval("SELECT current_database()")
            await self.reads.start(
                self.url,
                max_size=max(1, self.settings.pool_max_size // 2),
                command_timeout=self.settings.command_timeout,
            )
        except BaseException:
            if self._pool is not None:
                pool, self._pool = self._pool, None
                pool.terminate()
            await self._stop_embedded()
            raise

    async def _wait_for_schema(self, url: str) -> None:
        """Without migrations at startup, wait until whoever runs them (a Helm hook Job) has.

        Serving on an older schema would fail request by request; failing here instead keeps the
        pod unready (its startup probe) and says what to do. A revision this version does not
        know is newer: a rolling upgrade migrated ahead of this process, which then runs on it.
        """
        head, known = head_revision(), known_revisions()
        deadline = asyncio.get_running_loop().time() + self.settings.migrations_wait_seconds
        logged = False
        while True:
            current = await _schema_revision(url)
            if current == head:
                return
            if current is not None and current not in known:
                log.warning(
                    "the database is at a revision newer than this version's migrations; using it",
                    extra={"revision": current, "head": head},
                )
                return
            if asyncio.get_running_loop().time() >= deadline:
                raise RuntimeError(
                    f"the database schema is at revision {current or 'none'}, this version needs {head}: "
                    "run `vectorhive migrate` (database.migrate_on_startup is false; waited "
                    f"{self.settings.migrations_wait_seconds:g} s, database.migrations_wait_seconds)"
                )
            if not logged:
                log.info(
                    "waiting for the database migrations (`vectorhive migrate`)",
                    extra={"revision": current, "head": head},
                )
                logged = True
            await asyncio.sleep(2)

    def supervise(self, interval: float = 1.0) -> None:
        """Restart the embedded PostgreSQL whenever it dies (a server process calls this)."""
        if self.embedded is not None and self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(interval), name="embedded-pg-supervisor")

    async def _supervise(self, interval: float) -> None:
        delay = interval
        while True:
            await asyncio.sleep(delay)
            embedded = self.embedded
            if embedded is None:
                return
            try:
                if await asyncio.to_thread(embedded.restart_if_down):
                    log.warning("the embedded PostgreSQL had stopped; restarted it")
                delay = interval
            except Exception:
                # e.g. orphaned backends of a crashed postmaster still hold its shared memory
                log.warning("could not restart the embedded PostgreSQL yet; retrying", exc_info=True)
                delay = min(delay * 2, 10.0)

    async def check_before_shutdown(self) -> bool:
        """Whether the database answers now; if not, shutdown's last writes are skipped (logged)
        instead of each waiting for a connection or a statement timeout (a partition answers nothing)."""
        if self._pool is None or self.url is None:
            return False
        url = self.url

        async def probe() -> None:
            conn = await asyncpg.connect(url, timeout=SHUTDOWN_DATABASE_SECONDS)
            try:
                await conn.fetchval("SELECT 1", timeout=SHUTDOWN_DATABASE_SECONDS)
            finally:
                conn.terminate()  # no polite goodbye: it could wait for an answer

        try:
            await self._bounded(probe)
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) or is_database_outage(exc)):
                raise
            self._unreachable(exc)
            return False
        return True

    async def final_write(self, what: str, work: Callable[[], Awaitable[object]]) -> bool:
        """One of shutdown's last writes, bounded; skipped once the database proved unreachable.

        `what` says what is skipped when it cannot be written ("writing usage counts (lost)")."""
        if not self.unreachable_at_shutdown:
            try:
                await self._bounded(work)
                return True
            except Exception as exc:
                if not (isinstance(exc, TimeoutError) or is_database_outage(exc)):
                    log.exception(f"shutdown failed at {what}")
                    return False
                self._unreachable(exc)
        log.warning(f"database unreachable at shutdown; skipped {what}", extra={"skipped": what})
        return False

    async def _bounded(self, work: Callable[[], Awaitable[object]]) -> None:
        """work(), for at most SHUTDOWN_DATABASE_SECONDS.

        Not asyncio.wait_for: that waits for the cancelled work to wind down, and a pooled
        connection whose statement was cancelled waits for the server to confirm the cancellation,
        which a partition never does. Work that overruns is cancelled and left to end when stop()
        terminates the pool's connections."""
        task = asyncio.ensure_future(work())
        done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_DATABASE_SECONDS)
        if not done:
            task.cancel()
            self._overrun.add(task)
            raise TimeoutError
        task.result()

    def abandon(self, tasks: set[asyncio.Task[None]]) -> None:
        """Cancelled work still waiting for the database at shutdown: stop() lets it end."""
        self._overrun.update(tasks)

    def _unreachable(self, exc: BaseException) -> None:
        if not self.unreachable_at_shutdown:
            self.unreachable_at_shutdown = True
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning(
                "database unreachable at shutdown; not waiting for it",
                extra={"error": error, "timeout_seconds": SHUTDOWN_DATABASE_SECONDS},
            )

    async def stop(self) -> None:
        if self._supervisor is not None:
            supervisor, self._supervisor = self._supervisor, None
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await self._close_pool(pool)
        reads = self.reads.take_pool()
        if reads is not None:
            await self._close_pool(reads)
        await self._stop_embedded()

    async def _close_pool(self, pool: asyncpg.Pool) -> None:
        if self.unreachable_at_shutdown:
            pool.terminate()  # closing politely would wait for answers that cannot come
            overrun, self._overrun = self._overrun, set()
            if overrun:  # they end now that their connections are gone
                await asyncio.wait(overrun, timeout=SHUTDOWN_DATABASE_SECONDS)
                for task in overrun:
                    if task.done() and not task.cancelled():
                        task.exception()  # seen: the skipped write was logged already
        else:
            try:
                await asyncio.wait_for(pool.close(), timeout=10)
            except TimeoutError:
                log.warning("database pool did not close in 10 s; terminating connections")
                pool.terminate()

    async def _stop_embedded(self) -> None:
        if self.embedded is not None:
            embedded, self.embedded = self.embedded, None
            await asyncio.to_thread(embedded.stop)

    async def connect(self) -> asyncpg.Connection:
        """A connection of its own, outside the pool (the import runner's lease, an import's
        session), set up as the pool's connections are (_init_connection). The caller closes it."""
        if self.url is None:
            raise RuntimeError("database not started")
        conn = await asyncpg.connect(self.url)
        try:
            await _init_connection(conn)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def ping(self) -> None:
        async with self.pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1", timeout=2)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[ServiceConnection]:
        """One connection of the service's own login in one transaction (sees every tenant:
        for service bookkeeping; tenant data goes through tenant_transaction)."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield service_connection(conn)

    def tenant_statement(
        self, tenant_id: str, settings: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[TenantConnection]:
        """A connection in the tenant's context for one statement: one round trip when the pooled
        connection is in that context already (service/db/tenant_reads.py)."""
        return self.reads.statement(tenant_id, self.tenant_role(tenant_id), settings)

    def tenant_role(self, tenant_id: str) -> str:
        return tenant_role_name(self.database_name, tenant_id)

    async def ensure_tenant_role(self, conn: ServiceConnection, tenant_id: str) -> None:
        """Create the tenant's role if it is missing (idempotent; safe when two replicas race)."""
        role = self.tenant_role(tenant_id)  # a hex digest: safe to write into the statement
        statement = f"""
            DO $$
            BEGIN
                IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                    CREATE ROLE {role} NOLOGIN IN ROLE {TENANT_GROUP};
                END IF;
                IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                    EXECUTE 'GRANT {role} TO ' || quote_ident(current_user);
                END IF;
            END $$"""  # noqa: S608 (no user text: a fixed prefix and a hex digest)
        # A savepoint, so that losing a race with another replica does not abort the caller's work.
        with contextlib.suppress(asyncpg.UniqueViolationError):
            async with conn.transaction():
                await conn.execute(statement)

    @asynccontextmanager
    async def tenant_transaction(
        self, tenant_id: str, settings: Mapping[str, str] | None = None
    ) -> AsyncIterator[TenantConnection]:
        """A transaction in one tenant's context: PostgreSQL itself refuses other tenants' data.

        Runs as the tenant's own role for this transaction only (reverted at COMMIT or ROLLBACK):
        its vector tables are granted to that role alone, and row-level security limits the shared
        `collections` table to rows whose tenant_id equals app.tenant_id. A query that forgets its
        WHERE still cannot reach another tenant. `settings` are further transaction-local
        parameters (e.g. hnsw.ef_search), set in the same round trip.
        """
        context = tenant_context(tenant_id, self.tenant_role(tenant_id), settings)
        prelude = settings_sql(context, local=True)
        async with self.pool.acquire() as conn:
            if prelude is None:
                async with conn.transaction():
                    await set_local(conn, context)
                    yield TenantConnection(conn)
            else:
                async with TenantTransaction(conn._con, prelude):  # the connection behind the pool's proxy
                    yield TenantConnection(conn)
            CLEAN_AFTER_COMMIT.add(conn._con)
