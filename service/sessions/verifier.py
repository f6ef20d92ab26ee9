"""Session token -> Principal, for every bearer path (Authenticator.authenticate delegates here).

A token's first use on a process checks its signature (Ed25519, the kid's public key held in
memory), its claims, and the session's row: not ended, parent key neither revoked nor expired,
tenant status. The result is kept in a tenant-aware LRU + TTL pool under a hash of the token, so
later uses cost one hash and a lookup. Ending a session, revoking its parent key or suspending its
tenant evicts at once in the process that did it and, through LISTEN/NOTIFY (channels
vectorhive_sessions and vectorhive_auth), in every other within a second. While this process is
not receiving notifications the pool is bypassed, and it is emptied whenever the listener
reconnects; a verification that read the database before an eviction is not cached.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from service.auth.keys import KeyKind, fingerprint
from service.auth.principal import Permission, Principal
from service.config import SessionsSettings
from service.db import Database
from service.db.connections import service_connection
from service.errors import Forbidden, Unauthorized
from service.metrics import AUTH_FAILURES
from service.pool import TenantPool
from service.sessions import store
from service.sessions.signing import SESSION_CHANNEL, KeyRing
from service.sessions.tokens import (
    SESSION,
    Claims,
    TokenError,
    check_claims,
    check_signature,
    looks_like_jwt,
    parse,
)

if TYPE_CHECKING:
    from service.auth.cache import KeyCache
    from service.db.notify import NotificationHub

log = logging.getLogger("vectorhive.sessions")

# Uses of a session token that count as queries (max_queries). The session's own search endpoint
# counts itself (it is also reached with tenant keys).
QUERY_OPERATIONS = frozenset(
    {"searchCollection", "searchCollectionBatch", "answerQuestion", "retrieveContext"}
)

_CODES = {
    "malformed": "invalid_token",
    "bad_signature": "invalid_token",
    "wrong_issuer": "invalid_token",
    "not_yet_valid": "invalid_token",
    "wrong_audience": "token_wrong_audience",
    "expired": "token_expired",
    "unknown_kid": "unknown_signing_key",
}


def token_refused(exc: TokenError) -> Unauthorized:
    AUTH_FAILURES.labels("session_" + exc.reason).inc()
    return Unauthorized(str(exc), code=_CODES.get(exc.reason, "invalid_token"))


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: Principal
    session_id: str
    parent_key_id: str | None
    max_queries: int | None
    expires: float  # epoch seconds


class SessionVerifier:
    def __init__(self, db: Database, settings: SessionsSettings, keyring: KeyRing) -> None:
        self.db = db
        self.settings = settings
        self.keyring = keyring
        self.pool: TenantPool[bytes, _Verified] = TenantPool(
            "session_tokens",
            max_size=settings.verified_cache_size,
            max_per_tenant=settings.verified_cache_per_tenant,
            ttl=settings.verified_cache_ttl,
        )
        # subject ("session:<id>", "key:<id>", "tenant:<id>", "all") -> when it was last evicted.
        self._evicted: dict[str, float] = {}
        self._live: Callable[[], bool] = lambda: True
        # Queries of sessions without max_queries (added to queries_used by the sweep), and of
        # all sessions by (tenant, session, parent key) for the audit log's session.use rows.
        self.uses: Counter[str] = Counter()
        self.audit_uses: Counter[tuple[str, str, str | None]] = Counter()
        # session id -> whether it has max_queries, as verified here (bounded: emptied when full;
        # a session not in it is counted in the database, which is right in either case).
        self._limited_sessions: dict[str, bool] = {}

    def attach(self, hub: NotificationHub, key_cache: KeyCache) -> None:
        hub.subscribe(SESSION_CHANNEL, self.on_notification)
        hub.subscribe(SESSION_CHANNEL, self.keyring.on_notification)
        hub.on_reset(lambda: self.evict("all"))
        key_cache.add_eviction_listener(self.evict)
        self._live = lambda: hub.listening

    def on_notification(self, payload: str) -> None:
        if payload.startswith("session:"):
            self.evict(payload)

    def evict(self, subject: str) -> None:
        """subject: "session:<id>" | "key:<parent key id>" | "tenant:<id>" | "all"."""
        self._evicted[subject] = time.monotonic()
        if len(self._evicted) > 10_000:
            now = time.monotonic()
            self._evicted = {s: t for s, t in self._evicted.items() if now - t < 60}
        kind, _, value = subject.partition(":")
        if kind == "all":
            self.pool.clear()
        elif kind == "tenant":
            self.pool.evict_tenant(value)
        elif kind == "key":
            self.pool.evict_where(lambda _t, v: v.parent_key_id == value)
        elif kind == "session":
            self.pool.evict_where(lambda _t, v: v.session_id == value)

    def accepts(self, token: str) -> bool:
        return looks_like_jwt(token)

    async def verify(self, token: str, kind: str) -> Claims:
        """Signature and claims of a token of `kind` (delegation | session); no database read
        unless its kid is new to this process."""
        try:
            unverified = parse(token)
            key = self.keyring.public_key(unverified.header.kid) or await self.keyring.find_public_key(
                unverified.header.kid
            )
            if key is None:
                raise TokenError("unknown_kid", "The token was signed with a key this service does not know.")
            check_signature(unverified, key)
            check_claims(unverified.claims, issuer=self.settings.issuer, kind=kind, now=time.time())
        except TokenError as exc:
            raise token_refused(exc) from None
        return unverified.claims

    async def authenticate(self, token: str) -> Principal:
        fp = fingerprint(token)
        if self._live():
            hit = self.pool.get(fp)
            if hit is not None:
                if hit.expires > time.time():
                    return hit.principal
                self.pool.pop(fp)
                raise token_refused(TokenError("expired", "The session has expired."))
        read_at = time.monotonic()
        claims = await self.verify(token, SESSION)
        if claims.sid is None:
            raise token_refused(TokenError("malformed", "The token names no session."))
        found = await store.for_auth(service_connection(self.db.pool), claims.sid)
        if found is None or found.session.tenant_id != claims.tid:
            raise token_refused(TokenError("malformed", "The token's session does not exist."))
        session = found.session
        if session.ended_at is not None:
            AUTH_FAILURES.labels("session_ended").inc()
            why = "was deleted" if session.end_reason == "deleted" else "has expired"
            raise Unauthorized(f"The session {why}.", code="session_ended")
        if session.expires_at <= datetime.now(UTC):
            raise token_refused(TokenError("expired", "The session has expired."))
        if found.parent_state in ("revoked", "expired", "missing"):
            AUTH_FAILURES.labels("session_parent_" + found.parent_state).inc()
            raise Unauthorized(
                f"The API key that created this session is {found.parent_state}; the session ended with it.",
                code="parent_key_revoked" if found.parent_state != "expired" else "parent_key_expired",
            )
        if len(self._limited_sessions) >= self.settings.verified_cache_size:
            self._limited_sessions.clear()
        self._limited_sessions[session.id] = session.max_queries is not None
        # A plain Principal, as every authentication makes: it becomes the request's user, and the
        # guards hand handlers its TenantPrincipal form (service.auth.guards.provide_tenant).
        principal = Principal(
            kind=KeyKind.TENANT,
            key_id=session.parent_key_id,
            tenant_id=session.tenant_id,
            permission=Permission.READ_ONLY,
            collections=frozenset(session.collections),
            tenant_active=found.tenant_active,
            expires_at=session.expires_at,
            source="session",
            session_id=session.id,
        )
        subjects = (
            f"session:{session.id}",
            f"key:{session.parent_key_id}",
            f"tenant:{session.tenant_id}",
            "all",
        )
        if self._live() and not any(self._evicted.get(s, float("-inf")) >= read_at for s in subjects):
            expires = session.expires_at.timestamp()
            self.pool.put(
                session.tenant_id,
                fp,
                _Verified(
                    principal=principal,
                    session_id=session.id,
                    parent_key_id=session.parent_key_id,
                    max_queries=session.max_queries,
                    expires=expires,
                ),
                ttl=expires - time.time(),
            )
        return principal

    async def note_use(self, principal: Principal, operation: str) -> None:
        """principal: as the guards and the MCP service admitted it. Every session token's
        principal acts for its session's tenant (authenticate makes no other), so as_tenant()
        is None only for callers that are not sessions: nothing to count."""
        if principal.session_id is None or operation not in QUERY_OPERATIONS:
            return
        session = principal.as_tenant()
        if session is None:
            return
        if operation == "searchCollectionBatch" and self._limited(principal.session_id):
            # One request, up to 100 searches: it would count as one against max_queries.
            raise Forbidden(
                "A session with max_queries searches one query per request; batch search is not "
                "available to it.",
                code="session_batch_not_allowed",
            )
        await self.count_query(
            principal.session_id, tenant_id=session.tenant_id, parent_key_id=session.key_id
        )

    async def count_query(
        self, session_id: str, *, tenant_id: str, parent_key_id: str | None, limited: bool | None = None
    ) -> int | None:
        """One query of the session. With max_queries: counted in the database (all replicas share
        the allowance; returns the count), 403 session_queries_exhausted once it is used up;
        without: in memory, written by the sweep (returns None)."""
        if limited is None:
            limited = self._limited(session_id)
        used = None
        if limited:
            async with self.db.transaction() as conn:
                counted = await store.count_query(conn, session_id)
            if counted is None:
                raise Forbidden(
                    "This session has used all of its queries (max_queries).",
                    code="session_queries_exhausted",
                )
            used = counted[0]
        else:
            self.uses[session_id] += 1
        self.audit_uses[(tenant_id, session_id, parent_key_id)] += 1
        return used

    def _limited(self, session_id: str) -> bool:
        return self._limited_sessions.get(session_id, True)

    def take_uses(self) -> tuple[dict[str, int], dict[tuple[str, str, str | None], int]]:
        uses, audit_uses = dict(self.uses), dict(self.audit_uses)
        self.uses, self.audit_uses = Counter(), Counter()
        return uses, audit_uses

    def give_back(self, uses: dict[str, int], audit_uses: dict[tuple[str, str, str | None], int]) -> None:
        self.uses.update(uses)
        self.audit_uses.update(audit_uses)
