"""The way into one collection of a tenant: a tenant transaction and the collection's row.

Every part of the collections feature (and documents, and RAG) reaches a collection through
`CollectionAccess.open`, which also keeps a per-process cache of collection rows for the search
path, emptied across replicas through LISTEN/NOTIFY when a collection is dropped, renamed or
indexed. `Usage` charges and meters a tenant's collection work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from service.auth.principal import TenantPrincipal
from service.collections import store
from service.collections.store import CollectionRow
from service.config import CollectionsSettings
from service.db import Database, TenantConnection
from service.db.notify import COLLECTIONS_CHANNEL, NotificationHub
from service.errors import InvalidRequest, NotFound, ServiceError
from service.pool import TenantPool
from service.quota.service import Operation, QuotaService
from service.quota.usage import Metric, UsageMeter


class StaleCollection(Exception):
    """A cached collection row whose table is gone (dropped, perhaps created again): look again."""


def collection_not_found(name: str) -> NotFound:
    return NotFound(f"Collection '{name}' does not exist.")


def not_a_text_collection(name: str) -> InvalidRequest:
    return InvalidRequest(
        f"Collection '{name}' is not bound to an embedding model, so it has no documents or texts; "
        'create a collection with "embedding": {"model": ...} for text, or search it by vector.',
        code="not_a_text_collection",
    )


@asynccontextmanager
async def missing_table_is_not_found(name: str) -> AsyncIterator[None]:
    """A collection dropped by a concurrent request is simply not found (404, not 500)."""
    try:
        yield
    except asyncpg.UndefinedTableError:
        raise collection_not_found(name) from None


class Usage:
    """A tenant's collection work, charged to its token buckets and metered (either optional)."""

    def __init__(self, quotas: QuotaService | None, meter: UsageMeter | None) -> None:
        self.quotas = quotas
        self.meter = meter

    async def charge(self, tenant_id: str, operation: Operation, units: int) -> None:
        if self.quotas is not None:
            await self.quotas.charge(tenant_id, operation, units)

    def record(self, tenant_id: str, metric: Metric, quantity: int) -> None:
        if self.meter is not None:
            self.meter.record(tenant_id, metric, quantity)


class CollectionAccess:
    def __init__(self, db: Database, settings: CollectionsSettings) -> None:
        self.db = db
        # (tenant, name) -> the collection's row, for the search path (see open(cached=True)).
        self._rows: TenantPool[tuple[str, str], CollectionRow] = TenantPool(
            "collection_rows",
            max_size=settings.metadata_cache_size,
            max_per_tenant=settings.metadata_cache_per_tenant,
            ttl=settings.metadata_cache_ttl_seconds,
        )

    async def _require(self, conn: TenantConnection, principal: TenantPrincipal, name: str) -> CollectionRow:
        # A collection outside the key's scope looks exactly like one that does not exist.
        row = await store.get(conn, name) if principal.may_see_collection(name) else None
        if row is None:
            raise collection_not_found(name)
        return row

    @asynccontextmanager
    async def open(
        self,
        principal: TenantPrincipal,
        name: str,
        settings: dict[str, str] | None = None,
        *,
        cached: bool = False,
        single_statement: bool = False,
    ) -> AsyncIterator[tuple[TenantConnection, CollectionRow]]:
        """A tenant transaction and the collection it works on (404 if absent, or dropped meanwhile).

        settings: further transaction-local parameters (hnsw.ef_search and the like).
        cached: take the collection's row from this process's cache when it is there (the search
        path: one round trip less). A cached row may be stale only in what searches do not rely on
        (counts, data_version) or in its index status (an index that became ready is used from
        the notification on); a cached row of a dropped collection names a table that is gone,
        which raises StaleCollection for the caller to retry uncached, as does any refusal made
        while working on a cached row.
        single_statement: with a cached row, the caller's work is one statement: it runs on a
        connection kept in the tenant's context, without a transaction around it (one round trip
        instead of three, service/db/tenant_reads.py)."""
        tenant_id = principal.tenant_id
        key = (tenant_id, name)
        row = self._rows.get(key) if cached and principal.may_see_collection(name) else None
        if row is not None:
            context = (
                self.db.tenant_statement(tenant_id, settings)
                if single_statement
                else self.db.tenant_transaction(tenant_id, settings)
            )
            try:
                async with context as conn:
                    yield conn, row
            except (asyncpg.UndefinedTableError, ServiceError) as exc:
                # A refusal may come from the stale row itself (a dimension that has changed): the
                # caller asks again without the cache, and a real refusal is raised from there.
                self._rows.pop(key)
                raise StaleCollection(name) from exc
            return
        async with missing_table_is_not_found(name), self.db.tenant_transaction(tenant_id, settings) as conn:
            row = await self._require(conn, principal, name)
            self._rows.put(tenant_id, key, row)
            yield conn, row

    async def lookup(self, principal: TenantPrincipal, name: str) -> CollectionRow:
        """The collection's row as it is now (404 if the caller cannot see it)."""
        async with self.open(principal, name) as (_, row):
            return row

    async def text_collection(self, principal: TenantPrincipal, name: str) -> CollectionRow:
        """The collection, which must be bound to an embedding model (400 otherwise)."""
        row = await self.lookup(principal, name)
        if not row.has_text:
            raise not_a_text_collection(name)
        return row

    def attach(self, hub: NotificationHub) -> None:
        """Cached collection rows leave the cache when any process drops, renames or indexes the
        collection (a trigger on `collections` notifies), and all of them when the listener
        reconnects (notifications may have been missed)."""
        hub.subscribe(COLLECTIONS_CHANNEL, self._forget)
        hub.on_reset(self._rows.clear)

    def _forget(self, payload: str) -> None:
        tenant_id, _, name = payload.partition(":")
        self._rows.pop((tenant_id, name))
