"""Delegation: a tenant key signs a delegation token; someone without a key exchanges it, once,
for a session. The token is the credential of the exchange: its parent key must still be good and
its collections still within that key's reach when it is exchanged."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from service.audit import store as audit
from service.auth.keys import KeyKind
from service.auth.principal import Permission, TenantPrincipal
from service.auth.service import KeyService
from service.config import SessionsSettings
from service.db import Database
from service.errors import Forbidden, NotFound, Unauthorized
from service.quota.service import QuotaService
from service.sessions import store
from service.sessions.models import (
    CreateDelegationRequest,
    CreatedSession,
    Delegation,
    ExchangeDelegationRequest,
)
from service.sessions.opening import Opener, as_parent, field_problem, session_fields
from service.sessions.signing import KeyRing
from service.sessions.tokens import DELEGATION, Claims, new_token_id, sign
from service.sessions.verifier import SessionVerifier
from service.tenants.models import TenantStatus
from service.tenants.service import TenantService


class Delegations:
    def __init__(
        self,
        db: Database,
        settings: SessionsSettings,
        keyring: KeyRing,
        verifier: SessionVerifier,
        opener: Opener,
        keys: KeyService,
        tenants: TenantService,
        quotas: QuotaService | None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.keyring = keyring
        self.verifier = verifier
        self.opener = opener
        self.keys = keys
        self.tenants = tenants
        self.quotas = quotas

    async def delegate(self, principal: TenantPrincipal, request: CreateDelegationRequest) -> Delegation:
        as_parent(principal)
        s = self.settings
        lifetime = request.ttl_seconds or s.delegation_default_ttl_seconds
        if lifetime > s.delegation_max_ttl_seconds:
            raise field_problem("ttl_seconds", f"{lifetime} exceeds {s.delegation_max_ttl_seconds} seconds")
        session_ttl = self.opener.ttl(request.session_ttl_seconds, "session_ttl_seconds")
        names = sorted(set(request.collections))
        await self.opener.check_collections(principal, names)
        kid, private = await self.keyring.signer()
        now = int(time.time())
        claims = Claims(
            iss=s.issuer,
            aud=f"{s.issuer}:{DELEGATION}",
            exp=now + lifetime,
            iat=now,
            jti=new_token_id(),
            tid=principal.tenant_id,
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
                tenant_id=principal.tenant_id,
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
        try:
            tenant = await self.tenants.get(claims.tid)
        except NotFound:
            raise Unauthorized(
                "The delegation token's tenant does not exist.", code="invalid_token"
            ) from None
        if tenant.status is not TenantStatus.ACTIVE:
            raise Forbidden(f"Tenant '{claims.tid}' is suspended.", code="tenant_suspended")
        parent = await self._parent(claims)
        if self.quotas is not None:  # this route has no bearer key: apply the tenant's request limits here
            await self.quotas.check_request(claims.tid)
        ttl = self.opener.ttl(request.ttl_seconds or claims.ttl, "ttl_seconds", cap=claims.ttl)
        await self.opener.check_collections(parent, claims.col)
        row, token = await self.opener.open(
            claims.tid,
            parent_key_id=claims.pkid,
            collections=claims.col,
            ttl=ttl,
            max_queries=claims.mq,
            delegation_jti=claims.jti,
            actor=parent,
        )
        return CreatedSession(**session_fields(row), token=token)

    async def _parent(self, claims: Claims) -> TenantPrincipal:
        """The key that signed the delegation, as it is now."""
        if claims.pkid is not None and claims.pkid.startswith(store.HUB_KEY_PREFIX):
            # A HiveHub key: not stored here, so its current state cannot be read; the delegation
            # was signed while it was valid and carries no more than it could read.
            return TenantPrincipal(
                kind=KeyKind.TENANT,
                key_id=claims.pkid,
                tenant_id=claims.tid,
                permission=Permission.READ_ONLY,
                collections=frozenset(claims.col),
                source="hivehub",
            )
        if claims.pkid is None:  # minted by the keyless default tenant of single-tenant mode
            return TenantPrincipal(
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
        return TenantPrincipal(
            kind=KeyKind.TENANT,
            key_id=key.key_id,
            tenant_id=claims.tid,
            permission=key.permission,
            collections=frozenset(key.collections) if key.collections is not None else None,
            expires_at=key.expires_at,
        )
