"""Single-statement tenant reads: one round trip for the common search.

A tenant transaction costs three round trips (BEGIN with the tenant's context, the statement,
COMMIT). A read whose work is one statement does not need the explicit transaction: PostgreSQL
runs a lone statement in a transaction of its own. The connections here keep a tenant's context
at session level instead (the tenant's role, app.tenant_id and the search parameters), in a pool
of their own that nothing else draws from, so no service transaction can run on one. Each
connection's context is remembered: a read for the same tenant with the same parameters sends its
statement alone (one round trip); any other first switches the context (one message: two round
trips in all, one fewer than a transaction). An error, a cancellation or a release not known to
be clean forgets the connection's context, and its next read switches again from scratch.

Isolation does not rest on this bookkeeping alone: a tenant's vector tables are granted to its
role only, so a connection left in another tenant's role by a mistake here would be refused the
table (permission denied), never shown its rows; the shared `collections` table is limited by
row-level security on app.tenant_id, which is switched in the same message as the role.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, cast

import asyncpg

from service.db.connections import PgConnection, TenantConnection, settings_sql, tenant_context

Context = tuple[tuple[str, str], ...]


class TenantReads:
    def __init__(self, init: Callable[[asyncpg.Connection], Awaitable[None]]) -> None:
        self._init = init
        self._pool: asyncpg.Pool | None = None
        # connection -> the context it is in (weak: a connection the pool replaced is forgotten)
        self._contexts: weakref.WeakKeyDictionary[Any, Context] = weakref.WeakKeyDictionary()
        # Connections whose last read ended well: the pool's reset keeps their context.
        self._clean: weakref.WeakSet[Any] = weakref.WeakSet()

    async def start(self, url: str, *, max_size: int, command_timeout: float) -> None:
        self._pool = await asyncpg.create_pool(
            url,
            min_size=0,
            max_size=max_size,
            command_timeout=command_timeout,
            init=self._init,
            reset=self._reset,
        )

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database not started")
        return self._pool

    def take_pool(self) -> asyncpg.Pool | None:
        """For Database.stop: the pool, which this object no longer serves from."""
        pool, self._pool = self._pool, None
        return pool

    async def _reset(self, conn: Any) -> None:
        if conn in self._clean:
            self._clean.discard(conn)
        else:
            self._contexts.pop(conn, None)

    @asynccontextmanager
    async def statement(
        self, tenant_id: str, role: str, settings: Mapping[str, str] | None = None
    ) -> AsyncIterator[TenantConnection]:
        """A connection in the tenant's context for ONE statement (each statement on it is its own
        transaction: use Database.tenant_transaction for anything more)."""
        wanted: Context = tuple(sorted(tenant_context(tenant_id, role, settings).items()))
        async with self.pool.acquire() as proxy:
            conn = proxy._con  # the connection behind the pool's proxy, as the pool keeps it
            try:
                if self._contexts.get(conn) != wanted:
                    self._contexts.pop(conn, None)
                    await _switch(conn, dict(wanted))
                    self._contexts[conn] = wanted
                yield TenantConnection(cast("PgConnection", proxy))
            except BaseException:
                self._contexts.pop(conn, None)
                raise
            self._clean.add(conn)


async def _switch(conn: Any, context: Mapping[str, str]) -> None:
    """Put the session into `context`: everything reset first, then the role and the settings."""
    role = context["role"]
    others = {k: v for k, v in context.items() if k != "role"}
    if not re.fullmatch(r"vh_t_[0-9a-f]+", role):
        raise ValueError(f"not a tenant role: {role!r}")
    values = settings_sql(others, local=False)
    if values is not None:
        # One message; a multi-statement message is one transaction: it applies whole or not at all.
        await conn.execute(f"RESET ALL; SET ROLE {role}; {values}")
        return
    await conn.execute(f"RESET ALL; SET ROLE {role}")
    await conn.execute(
        "SELECT set_config(name, value, false) FROM unnest($1::text[], $2::text[]) AS s(name, value)",
        list(others),
        list(others.values()),
    )
