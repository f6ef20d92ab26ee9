"""Sessions: the service the controller calls. A session reads some of the collections its
parent key may read, never writes, and ends when its time is up, when it is deleted, or when its
parent key is revoked. The pieces: opening.py (the rules of a new session and its row),
delegation.py (delegation tokens and their exchange), s5.py (sessions over an S5 database),
ending.py (how a session ends, and the sweep), verifier.py (a session token on each request).
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime

from service.audit import store as audit
from service.auth.keys import KeyKind
from service.auth.principal import Permission, Principal, TenantPrincipal
from service.auth.service import KeyService
from service.collections.models import SearchRequest
from service.collections.service import CollectionService
from service.config import SessionsSettings
from service.db import Database
from service.db.connections import service_connection
from service.db.notify import NotificationHub
from service.errors import Conflict, NotFound
from service.imports.models import ImportStatus
from service.imports.service import ImportService
from service.pagination import decode_cursor, split_page
from service.quota.service import QuotaService
from service.sessions import store
from service.sessions.delegation import Delegations
from service.sessions.ending import SessionSweep, announce_end
from service.sessions.models import (
    CreateDelegationRequest,
    CreatedSession,
    CreateSessionRequest,
    Delegation,
    ExchangeDelegationRequest,
    JsonWebKey,
    JsonWebKeySet,
    Session,
    SessionPage,
    SessionSearchRequest,
    SessionSearchResult,
)
from service.sessions.opening import Opener, as_parent, field_problem, session_fields
from service.sessions.s5 import S5Sessions
from service.sessions.signing import SESSION_CHANNEL, KeyRing
from service.sessions.store import SessionRow
from service.sessions.verifier import SessionVerifier
from service.tenants.service import TenantService

log = logging.getLogger("vectorhive.sessions")


class SessionService:
    def __init__(
        self,
        db: Database,
        settings: SessionsSettings,
        keyring: KeyRing,
        verifier: SessionVerifier,
        collections: CollectionService,
        keys: KeyService,
        tenants: TenantService,
        quotas: QuotaService | None = None,
        imports: ImportService | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.keyring = keyring
        self.verifier = verifier
        self.collections = collections
        self.opener = Opener(db, settings, keyring, collections)
        self.s5 = S5Sessions(db, self.opener, collections, imports)
        self.delegations = Delegations(db, settings, keyring, verifier, self.opener, keys, tenants, quotas)
        self.ending = SessionSweep(db, settings, keyring, verifier, self.opener, self.s5)

    def attach(self, hub: NotificationHub) -> None:
        hub.subscribe(SESSION_CHANNEL, self._on_notification)

    def _on_notification(self, payload: str) -> None:
        kind, _, session_id = payload.partition(":")
        if kind == "session":
            self.opener.forget(session_id)

    # -- creating -------------------------------------------------------------------------------------

    async def create(self, principal: TenantPrincipal, request: CreateSessionRequest) -> CreatedSession:
        as_parent(principal)
        ttl = self.opener.ttl(request.ttl_seconds, "ttl_seconds")
        if (request.collections is None) == (request.source is None):
            raise field_problem("collections", "give exactly one of 'collections' and 'source'")
        if request.source is not None:
            return await self.s5.create(principal, request.source, ttl, request.max_queries)
        assert request.collections is not None
        names = sorted(set(request.collections))
        await self.opener.check_collections(principal, names)
        row, token = await self.opener.open(
            principal.tenant_id,
            parent_key_id=principal.key_id,
            collections=names,
            ttl=ttl,
            max_queries=request.max_queries,
            delegation_jti=None,
            actor=principal,
        )
        return CreatedSession(**session_fields(row), token=token)

    async def delegate(self, principal: TenantPrincipal, request: CreateDelegationRequest) -> Delegation:
        return await self.delegations.delegate(principal, request)

    async def exchange(self, request: ExchangeDelegationRequest) -> CreatedSession:
        return await self.delegations.exchange(request)

    # -- reading and ending ---------------------------------------------------------------------------

    @staticmethod
    def _visible(principal: TenantPrincipal, row: SessionRow) -> bool:
        """A session token sees its own session; a key limited to some collections sees the
        sessions within them (as it sees keys), other keys all of the tenant's."""
        if principal.session_id is not None:
            return principal.session_id == row.id
        return principal.collections is None or set(row.collections) <= principal.collections

    async def _row(self, principal: TenantPrincipal, session_id: str) -> SessionRow:
        row = await store.get(service_connection(self.db.pool), principal.tenant_id, session_id)
        if row is None or not self._visible(principal, row):
            raise NotFound(f"Session '{session_id}' does not exist.")
        return row

    async def get(self, principal: TenantPrincipal, session_id: str) -> Session:
        row = await self._row(principal, session_id)
        return Session(**session_fields(row, await self.s5.load(row)))

    async def list_page(
        self, principal: TenantPrincipal, *, cursor: str | None, limit: int, live_only: bool
    ) -> SessionPage:
        as_parent(principal)
        after = decode_cursor(cursor)
        found: list[SessionRow] = []
        # A scoped key sees only sessions within its collections: keep reading until a page is full.
        while len(found) <= limit:
            rows = await store.list_page(
                service_connection(self.db.pool),
                principal.tenant_id,
                after=after,
                limit=limit + 1,
                live_only=live_only,
            )
            found.extend(r for r in rows if self._visible(principal, r))
            if len(rows) <= limit:
                break
            after = rows[-1].id
        items, next_cursor = split_page(found, limit, lambda r: r.id)
        return SessionPage(
            items=[Session(**session_fields(r, await self.s5.load(r))) for r in items],
            next_cursor=next_cursor,
        )

    async def delete(self, principal: TenantPrincipal, session_id: str) -> None:
        """End the session now, here and (within a second) on every replica. Idempotent."""
        row = await self._row(principal, session_id)
        async with self.db.transaction() as conn:
            ended = await store.end(conn, row.tenant_id, session_id, "deleted")
            if ended is not None:
                await announce_end(
                    conn,
                    session_id,
                    row.tenant_id,
                    "session.delete",
                    principal,
                    {"queries_used": ended.queries_used},
                )
        self.ending.forget(session_id)
        if row.source == "s5" and row.dropped_at is None:
            try:
                await self.s5.drop(dataclasses.replace(row, ended_at=datetime.now(UTC)))
            except Exception:  # the sweep drops it
                log.warning("could not drop a session's collection yet", exc_info=True)

    # -- searching ------------------------------------------------------------------------------------

    async def search(
        self, principal: TenantPrincipal, session_id: str, request: SessionSearchRequest
    ) -> SessionSearchResult:
        row = await self._row(principal, session_id)
        if row.ended_at is not None or row.expires_at <= datetime.now(UTC):
            raise Conflict(f"Session '{session_id}' has ended.", code="session_ended")
        if row.source == "s5":
            load = await self.s5.load(row)
            if load is None or load.status in (ImportStatus.PENDING, ImportStatus.LOADING):
                raise Conflict(
                    f"Session '{session_id}' is still loading its S5 database; retry when "
                    "GET /api/v1/sessions/{id} says ready.",
                    code="session_loading",
                    headers={"Retry-After": "1"},
                )
            if load.status is not ImportStatus.LOADED:
                code = load.error.code if load.error is not None else load.status.value
                raise Conflict(
                    f"Session '{session_id}' could not load its S5 database ({code}).", code="session_failed"
                )
        if request.collection is None:
            if len(row.collections) > 1:
                raise field_problem("collection", "required: this session reads several collections")
            collection = row.collections[0]
        else:
            collection = request.collection
        reader = TenantPrincipal(
            kind=KeyKind.TENANT,
            key_id=row.parent_key_id,
            tenant_id=row.tenant_id,
            permission=Permission.READ_ONLY,
            collections=frozenset(row.collections) & (principal.collections or frozenset(row.collections)),
            source="session",
            session_id=row.id,
        )
        if not reader.may_see_collection(collection):
            raise NotFound(f"Collection '{collection}' does not exist.")
        used = await self.count_query(row)
        result = await self.collections.search(
            reader,
            collection,
            SearchRequest(
                vector=request.vector,
                text=request.query,
                mode=request.mode,
                top_k=request.top_k,
                threshold=request.threshold,
                filter=request.filter,
                include_metadata=request.include_metadata,
                include_vector=request.include_vector,
            ),
        )
        return SessionSearchResult(
            session_id=row.id,
            collection=collection,
            results=result.results,
            took_ms=result.took_ms,
            strategy=result.strategy,
            queries_used=used,
        )

    async def count_query(self, row: SessionRow) -> int | None:
        return await self.verifier.count_query(
            row.id,
            tenant_id=row.tenant_id,
            parent_key_id=row.parent_key_id,
            limited=row.max_queries is not None,
        )

    # -- keys -----------------------------------------------------------------------------------------

    async def jwks(self) -> JsonWebKeySet:
        return JsonWebKeySet(keys=[JsonWebKey(**k) for k in await self.keyring.jwks()])

    async def rotate_signing_key(self, actor: Principal) -> str:
        kid = await self.keyring.rotate()
        async with self.db.transaction() as conn:
            await audit.write(
                conn, action="session.signing_key.rotate", tenant_id=None, actor=actor, target=kid
            )
        return kid

    # -- the sweep (any replica; every sessions.sweep_interval_seconds) ------------------------------

    async def sweep(self) -> int:
        """End sessions whose time is up, record uses, prune old rows and keys; returns how many ended."""
        return await self.ending.sweep()

    async def close(self) -> None:
        """At shutdown: uses counted in memory reach the database (best effort)."""
        try:
            await self.ending.flush_uses()
        except Exception:
            log.warning("could not record session uses at shutdown", exc_info=True)
