"""The key service: create, list, get, revoke and rotate API keys (tenant and operator keys)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from service.audit import store as audit
from service.auth import store
from service.auth.cache import KeyCache
from service.auth.keys import KeyKind, hash_secret, new_key
from service.auth.models import (
    COLLECTION_NAME_RULE,
    ApiKey,
    CreatedApiKey,
    CreateKeyRequest,
    is_collection_name,
)
from service.auth.principal import Principal
from service.db import Database, ServiceConnection
from service.db.connections import service_connection
from service.db.notify import AUTH_CHANNEL, notify
from service.errors import Conflict, Forbidden, InvalidRequest, NotFound
from service.pagination import Page, decode_cursor, page_of
from service.tenants import store as tenant_store

log = logging.getLogger("vectorhive.auth")


def _created(key: ApiKey, token: str) -> CreatedApiKey:
    return CreatedApiKey(**{f: getattr(key, f) for f in ApiKey.__struct_fields__}, key=token)


def _check_expiry(expires_at: datetime | None) -> None:
    """In the future (that it names its zone, CreateKeyRequest's type says)."""
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise InvalidRequest.field("expires_at", "in the past", "expires_at must be in the future")


def _check_scope(scope: frozenset[str] | None, collections: list[str] | None) -> None:
    """A key limited to some collections manages only keys limited to (some of) the same ones."""
    if scope is None:
        return
    if collections is None or not set(collections) <= scope:
        raise Forbidden(
            "This key is limited to collections "
            f"{', '.join(sorted(scope))}; it can only manage keys limited to some of those.",
            code="insufficient_scope",
        )


class KeyService:
    def __init__(self, db: Database, cache: KeyCache | None = None) -> None:
        self.db = db
        self.cache = cache

    async def create(
        self,
        tenant_id: str | None,
        request: CreateKeyRequest,
        *,
        scope: frozenset[str] | None = None,
        actor: Principal | None = None,
    ) -> CreatedApiKey:
        """A tenant key (tenant_id set) or an operator key (tenant_id None; permission ignored).

        scope: the collections the creating key is limited to; the new key may not see more.
        """
        _check_expiry(request.expires_at)
        for i, name in enumerate(request.collections or []):
            if not is_collection_name(name):
                raise InvalidRequest.field(
                    f"collections[{i}]",
                    f"must be {COLLECTION_NAME_RULE}",
                    f"collections[{i}]: '{name}' is not a collection name ({COLLECTION_NAME_RULE})",
                )
        _check_scope(scope, request.collections)
        kind = KeyKind.TENANT if tenant_id is not None else KeyKind.OPERATOR
        token, parsed = new_key(kind)
        secret_hash = await asyncio.to_thread(hash_secret, parsed.secret)
        async with self.db.transaction() as conn:
            if tenant_id is not None and await tenant_store.get(conn, tenant_id) is None:
                raise NotFound(f"Tenant '{tenant_id}' does not exist.")
            key = await store.insert(
                conn,
                key_id=parsed.key_id,
                kind=kind,
                tenant_id=tenant_id,
                name=request.name,
                permission=request.permission if kind is KeyKind.TENANT else None,
                collections=sorted(set(request.collections)) if request.collections and tenant_id else None,
                secret_hash=secret_hash,
                expires_at=request.expires_at,
            )
            await audit.write(
                conn,
                action="key.create",
                tenant_id=tenant_id,
                actor=actor,
                target=key.key_id,
                details={"kind": kind.value, "permission": key.permission, "collections": key.collections},
            )
        log.info("api key created", extra={"key_id": key.key_id, "tenant_id": tenant_id, "kind": kind.value})
        return _created(key, token)

    async def list_page(
        self,
        tenant_id: str | None,
        *,
        cursor: str | None,
        limit: int,
        scope: frozenset[str] | None = None,
    ) -> Page[ApiKey]:
        """scope: the listing key's collections; it sees only keys limited to some of them (the
        keys it may manage), so other keys' collection names stay hidden from it."""
        kind = KeyKind.TENANT if tenant_id is not None else KeyKind.OPERATOR
        keys = await store.list_page(
            service_connection(self.db.pool),
            tenant_id=tenant_id,
            kind=kind,
            after=decode_cursor(cursor),
            limit=limit + 1,
            within=sorted(scope) if scope is not None else None,
        )
        return page_of(keys, limit, lambda k: k.key_id)

    async def get(self, tenant_id: str | None, key_id: str, *, scope: frozenset[str] | None = None) -> ApiKey:
        kind = KeyKind.TENANT if tenant_id is not None else KeyKind.OPERATOR
        key = await store.get(service_connection(self.db.pool), key_id, tenant_id=tenant_id, kind=kind)
        if key is None or (
            scope is not None and (key.collections is None or not set(key.collections) <= scope)
        ):
            raise NotFound(f"API key '{key_id}' does not exist.")
        return key

    async def revoke(
        self,
        tenant_id: str | None,
        key_id: str,
        *,
        any_tenant: bool = False,
        scope: frozenset[str] | None = None,
        actor: Principal | None = None,
    ) -> ApiKey:
        """Revoke a key of `tenant_id` (or any key at all, for the operator CLI with any_tenant)."""
        async with self.db.transaction() as conn:
            if not any_tenant:
                _check_scope(scope, (await self._get_locked(conn, tenant_id, key_id)).collections)
            key = await store.revoke(conn, key_id)
            if key is not None:
                # Every process on the database evicts the key when this commits.
                await notify(conn, AUTH_CHANNEL, f"key:{key_id}")
                await audit.write(
                    conn, action="key.revoke", tenant_id=key.tenant_id, actor=actor, target=key_id
                )
        if key is None:
            raise NotFound(f"API key '{key_id}' does not exist.")
        self._forget(key_id)
        log.info("api key revoked", extra={"key_id": key_id, "tenant_id": key.tenant_id})
        return key

    async def rotate(
        self,
        tenant_id: str,
        key_id: str,
        *,
        scope: frozenset[str] | None = None,
        actor: Principal | None = None,
    ) -> CreatedApiKey:
        """A new key with the same name, permission, scope and expiry; the old one is revoked at once."""
        token, parsed = new_key(KeyKind.TENANT)
        secret_hash = await asyncio.to_thread(hash_secret, parsed.secret)
        async with self.db.transaction() as conn:
            old = await self._get_locked(conn, tenant_id, key_id)
            _check_scope(scope, old.collections)
            if old.revoked_at is not None:
                raise Conflict(f"API key '{key_id}' is revoked; create a new key instead.")
            new = await store.insert(
                conn,
                key_id=parsed.key_id,
                kind=KeyKind.TENANT,
                tenant_id=tenant_id,
                name=old.name,
                permission=old.permission,
                collections=old.collections,
                secret_hash=secret_hash,
                expires_at=old.expires_at,
                rotated_from=old.key_id,
            )
            await store.revoke(conn, key_id)
            await notify(conn, AUTH_CHANNEL, f"key:{key_id}")
            await audit.write(
                conn,
                action="key.rotate",
                tenant_id=tenant_id,
                actor=actor,
                target=key_id,
                details={"new_key_id": new.key_id},
            )
        self._forget(key_id)
        log.info(
            "api key rotated", extra={"key_id": key_id, "new_key_id": new.key_id, "tenant_id": tenant_id}
        )
        return _created(new, token)

    async def _get_locked(self, conn: ServiceConnection, tenant_id: str | None, key_id: str) -> ApiKey:
        kind = KeyKind.TENANT if tenant_id is not None else KeyKind.OPERATOR
        key = await store.get(conn, key_id, tenant_id=tenant_id, kind=kind, for_update=True)
        if key is None:
            raise NotFound(f"API key '{key_id}' does not exist.")
        return key

    def _forget(self, key_id: str) -> None:
        if self.cache is not None:
            self.cache.evict_key(key_id)
