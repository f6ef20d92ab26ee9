"""Opening a session: the rules every new session obeys, whichever way it is asked for (from a
key, by exchanging a delegation token, or over an S5 database), and the row that records it.

Rights only ever narrow: a session reads some of the collections its parent may read, never
writes, lives within sessions.min/max_ttl_seconds, and counts against the tenant's and this
process's limits of live sessions.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from service.audit import store as audit
from service.auth.principal import TenantPrincipal
from service.collections.service import CollectionService
from service.config import SessionsSettings
from service.db import Database
from service.errors import Conflict, Forbidden, InvalidRequest, TooManyRequests
from service.imports.models import Import, ImportStatus
from service.sessions import store
from service.sessions.signing import KeyRing
from service.sessions.store import SessionRow
from service.sessions.tokens import SESSION, Claims, sign

log = logging.getLogger("vectorhive.sessions")


def new_session_id() -> str:
    return "ses_" + secrets.token_hex(12)


def field_problem(field: str, message: str) -> InvalidRequest:
    """A 400 about one field of a sessions request body."""
    return InvalidRequest.field(field, message, f"{field}: {message}")


def as_parent(principal: TenantPrincipal) -> None:
    """Only a tenant REST key may start sessions (or delegate them), not a session itself."""
    if principal.session_id is not None:
        raise Forbidden("A session token cannot start sessions.", code="session_token_not_allowed")


class Opener:
    """Opens sessions: TTL, collections and limits checked, the row written and audited, the
    token signed. Also keeps this process's live sessions (sessions.max_sessions_per_process)."""

    def __init__(
        self, db: Database, settings: SessionsSettings, keyring: KeyRing, collections: CollectionService
    ) -> None:
        self.db = db
        self.settings = settings
        self.keyring = keyring
        self.collections = collections
        # Sessions this process created that are still live: id -> expiry (epoch seconds), for
        # sessions.max_sessions_per_process (the seed's sessions per host).
        self._here: dict[str, float] = {}

    def forget(self, session_id: str) -> None:
        """The session ended (here or, through a notification, on another replica)."""
        self._here.pop(session_id, None)

    def ttl(self, requested: int | None, field: str, *, cap: int | None = None) -> int:
        s = self.settings
        ttl = requested if requested is not None else min(s.default_ttl_seconds, cap or s.default_ttl_seconds)
        high = min(s.max_ttl_seconds, cap) if cap is not None else s.max_ttl_seconds
        if not s.min_ttl_seconds <= ttl <= high:
            raise field_problem(field, f"{ttl} is outside {s.min_ttl_seconds}..{high} seconds")
        return ttl

    async def check_collections(self, principal: TenantPrincipal, names: list[str]) -> None:
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

    def check_process_limit(self) -> None:
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

    async def open(
        self,
        tenant_id: str,
        *,
        parent_key_id: str | None,
        collections: list[str],
        ttl: int,
        max_queries: int | None,
        delegation_jti: str | None,
        actor: TenantPrincipal,
        session_id: str | None = None,
        import_id: uuid.UUID | None = None,
    ) -> tuple[SessionRow, str]:
        """The session's row (within the tenant's limit of live sessions) and its token."""
        self.check_process_limit()
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
        return row, sign(claims, private, kid)


_LOAD_STATUS = {
    ImportStatus.PENDING: "loading",
    ImportStatus.LOADING: "loading",
    ImportStatus.LOADED: "ready",
    ImportStatus.ERROR: "error",
    ImportStatus.CANCELLED: "error",
}


def session_fields(row: SessionRow, load: Import | None = None) -> dict[str, Any]:
    """A session row as the API shows it (Session, CreatedSession); load: its S5 import."""
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
