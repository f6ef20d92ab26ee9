"""Sessions over an S5 database: the database loaded through the import pipeline into a
temporary collection of the tenant, read by the session once loaded, dropped when the last
session reading it has ended."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.auth.keys import KeyKind
from service.auth.principal import Permission, TenantPrincipal
from service.collections.service import CollectionService
from service.db import Database
from service.db.connections import service_connection
from service.errors import Conflict, Forbidden, NotFound, ServiceError, ServiceUnavailable
from service.imports.models import Import
from service.imports.service import ImportService
from service.sessions import store
from service.sessions.models import CreatedSession, S5Source
from service.sessions.opening import Opener, new_session_id, session_fields
from service.sessions.store import SessionRow

log = logging.getLogger("vectorhive.sessions")


def s5_collection_name(tenant_id: str, source: S5Source) -> str:
    """One collection per S5 database (and tenant): a second session of the same database finds
    it loaded, and the import's cache answers at once (after checking the key on the manifest)."""
    digest = hashlib.blake2b(
        f"{tenant_id}|{source.manifest_path}|{source.user_address.lower()}".encode(), digest_size=12
    ).hexdigest()
    return f"s5-{digest}"


def owner(tenant_id: str, collection: str, key_id: str | None = None) -> TenantPrincipal:
    """The service acting for the tenant on a session's own temporary collection only."""
    return TenantPrincipal(
        kind=KeyKind.TENANT,
        key_id=key_id,
        tenant_id=tenant_id,
        permission=Permission.ADMIN,
        collections=frozenset({collection}),
    )


class S5Sessions:
    def __init__(
        self, db: Database, opener: Opener, collections: CollectionService, imports: ImportService | None
    ) -> None:
        self.db = db
        self.opener = opener
        self.collections = collections
        self.imports = imports

    async def create(
        self, principal: TenantPrincipal, source: S5Source, ttl: int, max_queries: int | None
    ) -> CreatedSession:
        """Load the S5 database through the import pipeline into a collection named after the
        database; the session is `loading` until the import has committed."""
        if self.imports is None:
            raise ServiceUnavailable("Imports from S5 are not available here.", code="imports_not_configured")
        if not principal.allows(Permission.READ_WRITE):
            raise Forbidden(
                "Loading an S5 database into a session stores its vectors: that needs a READ_WRITE "
                "or ADMIN key.",
                code="insufficient_permission",
            )
        if principal.collections is not None:
            raise Forbidden(
                "A key limited to some collections cannot load an S5 database into a new one.",
                code="insufficient_scope",
            )
        self.opener.check_process_limit()
        tenant_id = principal.tenant_id
        session_id = new_session_id()
        collection = s5_collection_name(tenant_id, source)
        loader = owner(tenant_id, collection, principal.key_id)
        # Held until the session row exists, so that no other session's drop removes the shared
        # collection between this import's acceptance and this session's row.
        async with self.collection_lock(tenant_id, collection):
            accepted = await self.imports.submit(loader, collection, source.as_import())
            try:
                row, token = await self.opener.open(
                    tenant_id,
                    parent_key_id=principal.key_id,
                    collections=[collection],
                    ttl=ttl,
                    max_queries=max_queries,
                    delegation_jti=None,
                    actor=principal,
                    session_id=session_id,
                    import_id=uuid.UUID(accepted.import_id),
                )
                return CreatedSession(**session_fields(row, await self.load(row)), token=token)
            except BaseException:
                with contextlib.suppress(ServiceError):
                    await self.imports.cancel(loader, accepted.import_id)
                raise

    @asynccontextmanager
    async def collection_lock(self, tenant_id: str, collection: str) -> AsyncIterator[None]:
        """Serialises creating and dropping S5 sessions of one collection (all replicas)."""
        key = f"vectorhive:s5-session:{tenant_id}:{collection}"
        async with self.db.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", key)
            try:
                yield
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)

    async def load(self, row: SessionRow) -> Import | None:
        """The import that loads the session's S5 database (None for other sessions)."""
        if row.import_id is None or self.imports is None:
            return None
        try:
            return await self.imports.get(owner(row.tenant_id, row.collections[0]), str(row.import_id))
        except NotFound:
            return None

    async def drop(self, row: SessionRow) -> None:
        """Cancel the session's import (if still running) and drop its collection unless another
        live session of the same S5 database still reads it."""
        name = row.collections[0]
        acting = owner(row.tenant_id, name)
        async with self.collection_lock(row.tenant_id, name):
            if self.imports is not None and row.import_id is not None:
                with contextlib.suppress(Conflict, NotFound):
                    await self.imports.cancel(acting, str(row.import_id))
            shared = await store.live_sharing(service_connection(self.db.pool), row.tenant_id, name, row.id)
            if not shared:
                with contextlib.suppress(NotFound):
                    await self.collections.delete(acting, name)
            async with self.db.transaction() as conn:
                await store.mark_dropped(conn, row.id)
        log.info(
            "session collection released",
            extra={"session_id": row.id, "tenant_id": row.tenant_id, "dropped": not shared},
        )
