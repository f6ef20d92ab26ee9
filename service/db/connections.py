"""Tenant context as a type: which kind of connection a store function needs.

Two kinds of connection reach the stores, and mixing them up is a security bug, not a style
issue:

- a `TenantConnection` comes from `Database.tenant_transaction(tenant_id)`: it runs as the
  tenant's own role with `app.tenant_id` set, so PostgreSQL itself (table grants on the tenant's
  vector tables, row-level security on the shared `collections` table) refuses other tenants'
  rows. Stores of tenant data take this one.
- a `ServiceConnection` comes from `Database.transaction()`: the service's own login, which sees
  every tenant. Stores of service bookkeeping (keys, tenants, jobs, usage, audit) take this one.

Both are NewTypes over one typed view of asyncpg's connection, so they cost nothing at run time
and mypy refuses a service connection where a tenant one is required (and the reverse). The one
sanctioned ways from a plain connection to a tenant connection are `enter_tenant` and, for one
statement on a connection kept in the tenant's context, `Database.tenant_statement` (tenant_reads.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NewType, cast

if TYPE_CHECKING:
    from asyncpg.transaction import Transaction

    class PgConnection:
        """The part of asyncpg's connection (or its pool proxy) the stores use, typed.

        asyncpg ships no type information; this class exists for the type checker only.
        The `timeout` parameters are asyncpg's own (statement timeouts), hence ASYNC109 off."""

        async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str: ...
        async def executemany(
            self, command: str, args: Iterable[Sequence[Any]], *, timeout: float | None = None
        ) -> None: ...
        async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]: ...
        async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any: ...
        async def fetchval(
            self, query: str, *args: Any, column: int = 0, timeout: float | None = None
        ) -> Any: ...
        async def copy_records_to_table(
            self,
            table_name: str,
            *,
            records: Any,
            columns: Sequence[str] | None = None,
            schema_name: str | None = None,
            timeout: float | None = None,
        ) -> str: ...
        async def copy_to_table(
            self,
            table_name: str,
            *,
            source: Any,
            columns: Sequence[str] | None = None,
            format: str | None = None,
            timeout: float | None = None,
        ) -> str: ...
        async def prepare(self, query: str, *, timeout: float | None = None) -> Any: ...
        def transaction(
            self, *, isolation: str | None = None, readonly: bool = False, deferrable: bool = False
        ) -> Transaction: ...
        def cursor(
            self, query: str, *args: Any, prefetch: int | None = None, timeout: float | None = None
        ) -> Any: ...
        def is_in_transaction(self) -> bool: ...

else:
    PgConnection = object

TenantConnection = NewType("TenantConnection", PgConnection)
ServiceConnection = NewType("ServiceConnection", PgConnection)


def service_connection(conn: Any) -> ServiceConnection:
    """A connection of the service's own login, as acquired from the pool."""
    return ServiceConnection(cast("PgConnection", conn))


_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.:@/+=-]*")


def settings_sql(settings: Mapping[str, str], *, local: bool) -> str | None:
    """`SELECT set_config(...), ...` setting `settings` (transaction-locally or for the session),
    to travel in one message with other statements; None when a name or value is not plain text
    (then they must travel as parameters, in a round trip of their own: see set_local)."""
    if not all(_PLAIN_VALUE.fullmatch(v) and _PLAIN_VALUE.fullmatch(k) for k, v in settings.items()):
        return None
    flag = "true" if local else "false"
    return "SELECT " + ", ".join(f"set_config('{k}', '{v}', {flag})" for k, v in settings.items())


def tenant_context(tenant_id: str, role: str, settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """The transaction-local settings that put a transaction into one tenant's context: the
    tenant's own role and `app.tenant_id` (what row-level security compares), plus any further
    transaction-local parameters (e.g. hnsw.ef_search)."""
    return {"app.tenant_id": tenant_id, "role": role, **(settings or {})}


async def set_local(conn: Any, settings: Mapping[str, str]) -> None:
    """Transaction-local parameters (SET LOCAL), all in one round trip."""
    await conn.execute(
        "SELECT set_config(name, value, true) FROM unnest($1::text[], $2::text[]) AS s(name, value)",
        list(settings),
        list(settings.values()),
    )


async def enter_tenant(
    conn: Any, tenant_id: str, role: str, settings: Mapping[str, str] | None = None
) -> TenantConnection:
    """Put the open transaction on `conn` into the tenant's context, until it ends.

    The one way to a tenant connection other than `Database.tenant_transaction` (which folds the
    same settings into its BEGIN): for work on connections the pool does not hand out, such as an
    import's own connection. Must be called inside a transaction: the settings are SET LOCAL."""
    if not conn.is_in_transaction():
        raise RuntimeError("enter_tenant needs an open transaction: its settings are transaction-local")
    await set_local(conn, tenant_context(tenant_id, role, settings))
    return TenantConnection(cast("PgConnection", conn))
