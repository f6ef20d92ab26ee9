"""A tenant's own keys (ADMIN), and who-am-I for any key."""

from __future__ import annotations

from datetime import datetime

import msgspec
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from service.auth.guards import any_principal, requires
from service.auth.keys import KeyKind
from service.auth.models import ApiKey, CreatedApiKey, CreateKeyRequest
from service.auth.principal import Permission, Principal, TenantPrincipal
from service.auth.service import KeyService
from service.errors import AUTHENTICATED, Conflict, NotFound, problem_responses
from service.pagination import Cursor, Page, PageLimit


class Me(msgspec.Struct, kw_only=True):
    kind: KeyKind
    key_id: str | None
    tenant_id: str | None
    permission: Permission | None
    collections: list[str] | None
    expires_at: datetime | None


class MeController(Controller):
    path = "/api/v1/me"
    tags = ["keys"]

    @get(
        "",
        operation_id="getCurrentPrincipal",
        responses=problem_responses(*AUTHENTICATED),
        guards=[any_principal],
        summary="Who is calling",
    )
    async def me(self, principal: NamedDependency[Principal]) -> Me:
        return Me(
            kind=principal.kind,
            key_id=principal.key_id,
            tenant_id=principal.tenant_id,
            permission=principal.permission,
            collections=sorted(principal.collections) if principal.collections is not None else None,
            expires_at=principal.expires_at,
        )


class KeysController(Controller):
    """Keys of the caller's own tenant; another tenant's key ids are simply not found."""

    path = "/api/v1/keys"
    tags = ["keys"]
    guards = [requires(Permission.ADMIN)]

    @get(
        "",
        operation_id="listKeys",
        responses=problem_responses(*AUTHENTICATED),
        summary="List this tenant's API keys",
    )
    async def list_keys(
        self,
        tenant: NamedDependency[TenantPrincipal],
        keys: NamedDependency[KeyService],
        limit: PageLimit = 100,
        cursor: Cursor = None,
    ) -> Page[ApiKey]:
        return await keys.list_page(tenant.tenant_id, cursor=cursor, limit=limit, scope=tenant.collections)

    @post(
        "",
        operation_id="createKey",
        responses=problem_responses(*AUTHENTICATED),
        summary="Create an API key (the key is shown only in this response)",
    )
    async def create_key(
        self,
        tenant: NamedDependency[TenantPrincipal],
        keys: NamedDependency[KeyService],
        data: JSONBody[CreateKeyRequest],
    ) -> CreatedApiKey:
        return await keys.create(tenant.tenant_id, data, scope=tenant.collections, actor=tenant)

    @get(
        "/{key_id:str}",
        operation_id="getKey",
        responses=problem_responses(*AUTHENTICATED, NotFound),
        summary="One API key",
    )
    async def get_key(
        self,
        tenant: NamedDependency[TenantPrincipal],
        keys: NamedDependency[KeyService],
        key_id: FromPath[str],
    ) -> ApiKey:
        return await keys.get(tenant.tenant_id, key_id, scope=tenant.collections)

    @delete(
        "/{key_id:str}",
        operation_id="revokeKey",
        responses=problem_responses(*AUTHENTICATED, NotFound),
        status_code=200,
        summary="Revoke an API key at once",
    )
    async def revoke_key(
        self,
        tenant: NamedDependency[TenantPrincipal],
        keys: NamedDependency[KeyService],
        key_id: FromPath[str],
    ) -> ApiKey:
        return await keys.revoke(tenant.tenant_id, key_id, scope=tenant.collections, actor=tenant)

    @post(
        "/{key_id:str}/rotate",
        operation_id="rotateKey",
        responses=problem_responses(*AUTHENTICATED, NotFound, Conflict),
        summary="Replace a key: a new key with the same settings; the old one is revoked at once",
    )
    async def rotate_key(
        self,
        tenant: NamedDependency[TenantPrincipal],
        keys: NamedDependency[KeyService],
        key_id: FromPath[str],
    ) -> CreatedApiKey:
        return await keys.rotate(tenant.tenant_id, key_id, scope=tenant.collections, actor=tenant)
