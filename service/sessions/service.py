"""Sessions: create (from a key, or by exchanging a delegation token), read, list, end, search,
and the durable sweep. Rights only ever narrow: a session reads some of the collections its
parent key may read, never writes, and ends when its parent key is revoked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from service.audit import store as audit
from service.auth.keys import KeyKind
from service.auth.principal import Permission, Principal
from service.auth.service import KeyService
from service.collections.models import SearchRequest
from service.collections.service import CollectionService
from service.config import SessionsSettings
from service.db import Database
from service.db.notify import NotificationHub, notify
from service.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    ServiceError,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)
from service.imports.models import Import, ImportStatus
from service.imports.service import ImportService
from service.pagination import decode_cursor, split_page
from service.quota.service import QuotaService
from service.sessions import store
from service.sessions.models import (
    CreateDelegationRequest,
    CreatedSession,
    CreateSessionRequest,
    Delegation,
    ExchangeDelegationRequest,
    JsonWebKey,
    JsonWebKeySet,
    S5Source,
    Session,
    SessionPage,
    SessionSearchRequest,
    SessionSearchResult,
)
from service.sessions.signing import SESSION_CHANNEL, KeyRing
from service.sessions.store import SessionRow
from service.sessions.tokens import DELEGATION, SESSION, Claims, new_token_id, sign
from service.sessions.verifier import SessionVerifier
from service.tenants.models import TenantStatus
from service.tenants.service import TenantService

log = logging.getLogger("vectorhive.sessions")


def _field_problem(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(
        f"{field}: {message}", errors=[{"field": field, "source": "body", "message": message}]
    )


def new_session_id() -> str:
    return "ses_" + secrets.token_hex(12)


def s5_collection_name(tenant_id: str, source: S5Source) -> str:
    """One collection per S5 database (and tenant): a second session of the same database finds
    it loaded, and the import's cache answers at once (after checking the key on the manifest)."""
    digest = hashlib.blake2b(
        f"{tenant_id}|{source.manifest_path}|{source.user_address.lower()}".encode(), digest_size=12
    ).hexdigest()
    return f"s5-{digest}"


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
        self.keys = keys
        self.tenants = tenants
        self.quotas = quotas
        self.imports = imports
        # Sessions this process created that are still live: id -> expiry (epoch seconds), for
        # sessions.max_sessions_per_process (the seed's sessions per host).
        self._here: dict[str, float] = {}

    def attach(self, hub: NotificationHub) -> None:
        hub.subscribe(SESSION_CHANNEL, self._on_notification)

    def _on_notification(self, payload: str) -> None:
        kind, _, session_id = payload.partition(":")
        if kind == "session":
            self._here.pop(session_id, None)

    # -- rules ----------------------------------------------------------------------------------------

    def _ttl(self, requested: int | None, field: str, *, cap: int | None = None) -> int:
        s = self.settings
        ttl = requested if requested is not None else min(s.default_ttl_seconds, cap or s.default_ttl_seconds)
        high = min(s.max_ttl_seconds, cap) if cap is not None else s.max_ttl_seconds
        if not s.min_ttl_seconds <= ttl <= high:
            raise _field_problem(field, f"{ttl} is outside {s.min_ttl_seconds}..{high} seconds")
        return ttl

    @staticmethod
    def _as_parent(principal: Principal) -> str:
        """The tenant of a principal that may start sessions (a tenant REST key, not a session)."""
        if principal.session_id is not None:
            raise Forbidden("A session token cannot start sessions.", code="session_token_not_allowed")
        assert principal.tenant_id is not None
        return principal.tenant_id

    async def _check_collections(self, principal: Principal, names: list[str]) -> None:
        """Only narrowing: a key limited to some collections delegates only (some of) those; each
        must exist in the caller's tenant (another tenant's collection is simply not found)."""
        if principal.collections is not None and not set(names) <= principal.collections:
            raise Forbidden(
                "This key is limited to collections "
                f"{', '.join(sorted(principal.collections))}; a session can only read some of those.",
                code="insufficient_scope",
            )
        for name in names:
            await self.collections.get(principal, name)

    def _check_process_limit(self) -> None:
        now = time.time()
        self._here = {sid: exp for sid, exp in self._here.items() if exp > now}
        limit = self.settings.max_sessions_per_process
        if len(self._here) >= limit:
            raise TooManyRequests(
                f"This server holds {limit} live sessions (sessions.max_sessions_per_process); "
                "retry when one ends.",
                limit_name="max_sessions_per_process",
                scope="server",
                value=limit,
                retry_after=max(1.0, min(self._here.values()) - now),
            )

    # -- creating -------------------------------------------------------------------------------------

    async def create(self, principal: Principal, request: CreateSessionRequest) -> CreatedSession:
        tenant_id = self._as_parent(principal)
        ttl = self._ttl(request.ttl_seconds, "ttl_seconds")
        if (request.collections is None) == (request.source is None):
            raise _field_problem("collections", "give exactly one of 'collections' and 'source'")
        if request.source is not None:
            return await self._create_from_s5(principal, tenant_id, request.source, ttl, request.max_queries)
        assert request.collections is not None
        names = sorted(set(request.collections))
        await self._check_collections(principal, names)
        return await self._open(
            tenant_id,
            parent_key_id=principal.key_id,
            collections=names,
            ttl=ttl,
            max_queries=request.max_queries,
            delegation_jti=None,
            actor=principal,
        )

    async def _create_from_s5(
        self, principal: Principal, tenant_id: str, source: S5Source, ttl: int, max_queries: int | None
    ) -> CreatedSession:
        """Load the S5 database through the import pipeline into a collection named after the
        session; the session is `loading` until the import has committed."""
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
        self._check_process_limit()
        session_id = new_session_id()
        collection = s5_collection_name(tenant_id, source)
        loader = self._owner(tenant_id, collection, principal.key_id)
        # Held until the session row exists, so that no other session's drop removes the shared
        # collection between this import's acceptance and this session's row.
        async with self._collection_lock(tenant_id, collection):
            accepted = await self.imports.submit(loader, collection, source.as_import())
            try:
                return await self._open(
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
            except BaseException:
                with contextlib.suppress(ServiceError):
                    await self.imports.cancel(loader, accepted.import_id)
                raise

    @asynccontextmanager
    async def _collection_lock(self, tenant_id: str, collection: str) -> AsyncIterator[None]:
        """Serialises creating and dropping S5 sessions of one collection (all replicas)."""
        key = f"vectorhive:s5-session:{tenant_id}:{collection}"
        async with self.db.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", key)
            try:
                yield
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)

    @staticmethod
    def _owner(tenant_id: str, collection: str, key_id: str | None = None) -> Principal:
        """The service acting for the tenant on a session's own temporary collection only."""
        return Principal(
            kind=KeyKind.TENANT,
            key_id=key_id,
            tenant_id=tenant_id,
            permission=Permission.ADMIN,
            collections=frozenset({collection}),
        )

    async def _load(self, row: SessionRow) -> Import | None:
        if row.import_id is None or self.imports is None:
            return None
        try:
            return await self.imports.get(self._owner(row.tenant_id, row.collections[0]), str(row.import_id))
        except NotFound:
            return None

    async def _drop(self, row: SessionRow) -> None:
        """Cancel the session's import (if still running) and drop its collection unless another
        live session of the same S5 database still reads it."""
        name = row.collections[0]
        owner = self._owner(row.tenant_id, name)
        async with self._collection_lock(row.tenant_id, name):
            if self.imports is not None and row.import_id is not None:
                with contextlib.suppress(Conflict, NotFound):
                    await self.imports.cancel(owner, str(row.import_id))
            shared = await store.live_sharing(self.db.pool, row.tenant_id, name, row.id)
            if not shared:
                with contextlib.suppress(NotFound):
                    await self.collections.delete(owner, name)
            async with self.db.transaction() as conn:
                await store.mark_dropped(conn, row.id)
        log.info(
            "session collection released",
            extra={"session_id": row.id, "tenant_id": row.tenant_id, "dropped": not shared},
        )

    async def delegate(self, principal: Principal, request: CreateDelegationRequest) -> Delegation:
        tenant_id = self._as_parent(principal)
        s = self.settings
        lifetime = request.ttl_seconds or s.delegation_default_ttl_seconds
        if lifetime > s.delegation_max_ttl_seconds:
            raise _field_problem("ttl_seconds", f"{lifetime} exceeds {s.delegation_max_ttl_seconds} seconds")
        session_ttl = self._ttl(request.session_ttl_seconds, "session_ttl_seconds")
        names = sorted(set(request.collections))
        await self._check_collections(principal, names)
        kid, private = await self.keyring.signer()
        now = int(time.time())
        claims = Claims(
            iss=s.issuer,
            aud=f"{s.issuer}:{DELEGATION}",
            exp=now + lifetime,
            iat=now,
            jti=new_token_id(),
            tid=tenant_id,
            pkid=principal.key_id,
            col=names,
            mq=request.max_queries,
            ttl=session_ttl,
        )
        token = sign(claims, private, kid)
        async with self.db.transaction() as conn:
            await audit.write(
                conn,
                action="session.delegate",
                tenant_id=tenant_id,
                actor=principal,
                target=claims.jti,
                details={"collections": names, "expires": claims.exp, "max_queries": request.max_queries},
            )
        return Delegation(
            delegation_token=token,
            jti=claims.jti,
            expires_at=datetime.fromtimestamp(claims.exp, UTC),
            collections=names,
            session_ttl_seconds=session_ttl,
            max_queries=request.max_queries,
        )

    async def exchange(self, request: ExchangeDelegationRequest) -> CreatedSession:
        """The delegation token is the credential: its parent key must still be good, its
        collections still within that key's reach, and it is good for one session only."""
        claims = await self.verifier.verify(request.delegation_token, DELEGATION)
        tenant = await self._tenant_or_none(claims.tid)
        if tenant is None:
            raise Unauthorized("The delegation token's tenant does not exist.", code="invalid_token")
        if tenant.status is not TenantStatus.ACTIVE:
            raise Forbidden(f"Tenant '{claims.tid}' is suspended.", code="tenant_suspended")
        parent = await self._parent(claims)
        if self.quotas is not None:  # this route has no bearer key: apply the tenant's request limits here
            await self.quotas.check_request(claims.tid)
        ttl = self._ttl(request.ttl_seconds or claims.ttl, "ttl_seconds", cap=claims.ttl)
        await self._check_collections(parent, claims.col)
        return await self._open(
            claims.tid,
            parent_key_id=claims.pkid,
            collections=claims.col,
            ttl=ttl,
            max_queries=claims.mq,
            delegation_jti=claims.jti,
            actor=parent,
        )

    async def _tenant_or_none(self, tenant_id: str) -> Any:
        try:
            return await self.tenants.get(tenant_id)
        except NotFound:
            return None

    async def _parent(self, claims: Claims) -> Principal:
        if claims.pkid is not None and claims.pkid.startswith(store.HUB_KEY_PREFIX):
            # A HiveHub key: not stored here, so its current state cannot be read; the delegation
            # was signed while it was valid and carries no more than it could read.
            return Principal(
                kind=KeyKind.TENANT,
                key_id=claims.pkid,
                tenant_id=claims.tid,
                permission=Permission.READ_ONLY,
                collections=frozenset(claims.col),
                source="hivehub",
            )
        if claims.pkid is None:  # minted by the keyless default tenant of single-tenant mode
            return Principal(
                kind=KeyKind.TENANT, key_id=None, tenant_id=claims.tid, permission=Permission.ADMIN
            )
        try:
            key = await self.keys.get(claims.tid, claims.pkid)
        except NotFound:
            key = None
        if key is None or key.revoked_at is not None:
            raise Unauthorized(
                "The API key that issued this delegation has been revoked.", code="parent_key_revoked"
            )
        if key.expires_at is not None and key.expires_at <= datetime.now(UTC):
            raise Unauthorized(
                "The API key that issued this delegation has expired.", code="parent_key_expired"
            )
        if key.permission is None or key.permission is Permission.MCP:
            raise Forbidden("Only REST keys can delegate sessions.", code="insufficient_permission")
        return Principal(
            kind=KeyKind.TENANT,
            key_id=key.key_id,
            tenant_id=claims.tid,
            permission=key.permission,
            collections=frozenset(key.collections) if key.collections is not None else None,
            expires_at=key.expires_at,
        )

    async def _open(
        self,
        tenant_id: str,
        *,
        parent_key_id: str | None,
        collections: list[str],
        ttl: int,
        max_queries: int | None,
        delegation_jti: str | None,
        actor: Principal,
        session_id: str | None = None,
        import_id: uuid.UUID | None = None,
    ) -> CreatedSession:
        self._check_process_limit()
        kid, private = await self.keyring.signer()
        session_id = session_id or new_session_id()
        limit = self.settings.max_sessions_per_tenant
        async with self.db.transaction() as conn:
            await store.lock_tenant(conn, tenant_id)
            live, first_end = await store.live_count(conn, tenant_id)
            if live >= limit:
                wait = (first_end - datetime.now(UTC)).total_seconds() if first_end else 1.0
                raise TooManyRequests(
                    f"The tenant has {limit} live sessions (sessions.max_sessions_per_tenant); end one "
                    "or wait for one to expire.",
                    limit_name="max_sessions_per_tenant",
                    scope="tenant",
                    value=limit,
                    retry_after=max(1.0, wait),
                )
            row = await store.insert(
                conn,
                session_id=session_id,
                tenant_id=tenant_id,
                parent_key_id=parent_key_id,
                collections=collections,
                max_queries=max_queries,
                delegation_jti=delegation_jti,
                kid=kid,
                ttl_seconds=ttl,
                import_id=import_id,
            )
            if row is None:
                raise Conflict("This delegation token has already been exchanged.", code="delegation_used")
            await audit.write(
                conn,
                action="session.create",
                tenant_id=tenant_id,
                actor=actor,
                target=session_id,
                details={
                    "collections": collections,
                    "ttl_seconds": ttl,
                    "max_queries": max_queries,
                    "delegation": delegation_jti,
                    "import_id": str(import_id) if import_id else None,
                },
            )
        claims = Claims(
            iss=self.settings.issuer,
            aud=f"{self.settings.issuer}:{SESSION}",
            exp=int(row.expires_at.timestamp()),
            iat=int(row.created_at.timestamp()),
            jti=session_id,
            tid=tenant_id,
            pkid=parent_key_id,
            col=collections,
            mq=max_queries,
            sid=session_id,
        )
        self._here[session_id] = row.expires_at.timestamp()
        log.info("session created", extra={"session_id": session_id, "tenant_id": tenant_id})
        load = await self._load(row)
        return CreatedSession(**_fields(row, load), token=sign(claims, private, kid))

    # -- reading and ending ---------------------------------------------------------------------------

    @staticmethod
    def _visible(principal: Principal, row: SessionRow) -> bool:
        """A session token sees its own session; a key limited to some collections sees the
        sessions within them (as it sees keys), other keys all of the tenant's."""
        if principal.session_id is not None:
            return principal.session_id == row.id
        return principal.collections is None or set(row.collections) <= principal.collections

    async def _row(self, principal: Principal, session_id: str) -> SessionRow:
        assert principal.tenant_id is not None
        row = await store.get(self.db.pool, principal.tenant_id, session_id)
        if row is None or not self._visible(principal, row):
            raise NotFound(f"Session '{session_id}' does not exist.")
        return row

    async def get(self, principal: Principal, session_id: str) -> Session:
        row = await self._row(principal, session_id)
        return Session(**_fields(row, await self._load(row)))

    async def list_page(
        self, principal: Principal, *, cursor: str | None, limit: int, live_only: bool
    ) -> SessionPage:
        tenant_id = self._as_parent(principal)
        after = decode_cursor(cursor)
        found: list[SessionRow] = []
        # A scoped key sees only sessions within its collections: keep reading until a page is full.
        while len(found) <= limit:
            rows = await store.list_page(
                self.db.pool, tenant_id, after=after, limit=limit + 1, live_only=live_only
            )
            found.extend(r for r in rows if self._visible(principal, r))
            if len(rows) <= limit:
                break
            after = rows[-1].id
        items, next_cursor = split_page(found, limit, lambda r: r.id)
        return SessionPage(
            items=[Session(**_fields(r, await self._load(r))) for r in items], next_cursor=next_cursor
        )

    async def delete(self, principal: Principal, session_id: str) -> None:
        """End the session now, here and (within a second) on every replica. Idempotent."""
        row = await self._row(principal, session_id)
        async with self.db.transaction() as conn:
            ended = await store.end(conn, row.tenant_id, session_id, "deleted")
            if ended is not None:
                await self._announce_end(
                    conn,
                    session_id,
                    row.tenant_id,
                    "session.delete",
                    principal,
                    {"queries_used": ended.queries_used},
                )
        self._forget(session_id)
        if row.source == "s5" and row.dropped_at is None:
            try:
                await self._drop(dataclasses.replace(row, ended_at=datetime.now(UTC)))
            except Exception:  # the sweep drops it
                log.warning("could not drop a session's collection yet", exc_info=True)

    # -- searching ------------------------------------------------------------------------------------

    async def search(
        self, principal: Principal, session_id: str, request: SessionSearchRequest
    ) -> SessionSearchResult:
        row = await self._row(principal, session_id)
        if row.ended_at is not None or row.expires_at <= datetime.now(UTC):
            raise Conflict(f"Session '{session_id}' has ended.", code="session_ended")
        if row.source == "s5":
            load = await self._load(row)
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
                raise _field_problem("collection", "required: this session reads several collections")
            collection = row.collections[0]
        else:
            collection = request.collection
        reader = Principal(
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
        ended = 0
        while True:
            async with self.db.transaction() as conn:
                rows = await store.expire_due(conn, 500)
                for row in rows:
                    await self._announce_end(
                        conn,
                        row.id,
                        row.tenant_id,
                        "session.expire",
                        None,
                        {"queries_used": row.queries_used, "expired_at": row.expires_at.isoformat()},
                    )
            for row in rows:
                self._forget(row.id)
            ended += len(rows)
            if len(rows) < 500:
                break
        await self._check_s5_sessions()
        await self._flush_uses()
        async with self.db.transaction() as conn:
            await store.prune_ended(conn, self.settings.retention_days)
        await self.keyring.prune()
        await self.keyring.rotate_if_old()
        return ended

    @staticmethod
    async def _announce_end(
        conn: Any,
        session_id: str,
        tenant_id: str,
        action: str,
        actor: Principal | None,
        details: dict[str, Any],
    ) -> None:
        """In the transaction that ends a session: every process forgets its token at commit
        (NOTIFY), and the audit log says who ended it and why."""
        await notify(conn, SESSION_CHANNEL, f"session:{session_id}")
        await audit.write(
            conn, action=action, tenant_id=tenant_id, actor=actor, target=session_id, details=details
        )

    def _forget(self, session_id: str) -> None:
        """After the commit: this process stops accepting the session's token at once."""
        self.verifier.evict(f"session:{session_id}")
        self._here.pop(session_id, None)

    async def _check_s5_sessions(self) -> None:
        """End S5-backed sessions whose import failed; drop the collections of ended ones."""
        for row in await store.s5_to_check(self.db.pool, 200):
            try:
                if row.ended_at is None:
                    load = await self._load(row)
                    if load is None or load.status not in (ImportStatus.ERROR, ImportStatus.CANCELLED):
                        continue
                    async with self.db.transaction() as conn:
                        ended = await store.end(conn, row.tenant_id, row.id, "failed")
                        if ended is None:
                            continue
                        await self._announce_end(
                            conn,
                            row.id,
                            row.tenant_id,
                            "session.fail",
                            None,
                            {"error": load.error.code if load.error else load.status.value},
                        )
                    self._forget(row.id)
                    row = ended
                await self._drop(row)
            except Exception:
                log.warning("could not settle an S5-backed session; will retry", exc_info=True)

    async def close(self) -> None:
        """At shutdown: uses counted in memory reach the database (best effort)."""
        try:
            await self._flush_uses()
        except Exception:
            log.warning("could not record session uses at shutdown", exc_info=True)

    async def _flush_uses(self) -> None:
        unlimited, uses = self.verifier.take_uses()
        if not unlimited and not uses:
            return
        try:
            async with self.db.transaction() as conn:
                if unlimited:
                    await store.add_queries(conn, unlimited)
                for (tenant_id, session_id, parent), count in uses.items():
                    await audit.write(
                        conn,
                        action="session.use",
                        tenant_id=tenant_id,
                        actor=Principal(
                            kind=KeyKind.TENANT,
                            key_id=parent,
                            tenant_id=tenant_id,
                            permission=Permission.READ_ONLY,
                        ),
                        target=session_id,
                        details={"queries": count},
                    )
        except Exception:
            self.verifier.give_back(unlimited, uses)  # counted at the next sweep rather than lost
            raise


_LOAD_STATUS = {
    ImportStatus.PENDING: "loading",
    ImportStatus.LOADING: "loading",
    ImportStatus.LOADED: "ready",
    ImportStatus.ERROR: "error",
    ImportStatus.CANCELLED: "error",
}


def _fields(row: SessionRow, load: Import | None = None) -> dict[str, Any]:
    expired = row.ended_at is None and row.expires_at <= datetime.now(UTC)
    if row.ended_at is not None or expired:
        status = "ended"
    elif row.source == "s5":
        status = _LOAD_STATUS[load.status] if load is not None else "loading"
    else:
        status = "active"
    return {
        "session_id": row.id,
        "status": status,
        "source": row.source,
        "load": load,
        "mode": "read_only",
        "collections": row.collections,
        "parent_key_id": row.parent_key_id,
        "max_queries": row.max_queries,
        "queries_used": row.queries_used,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "ended_at": row.ended_at if not expired else row.expires_at,
        "end_reason": row.end_reason if not expired else "expired",
    }
