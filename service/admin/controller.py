"""/api/v1/admin: operators manage tenants and their keys. Operator keys only."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from service.auth.guards import operator_only
from service.auth.models import ApiKey, CreatedApiKey, CreateKeyRequest
from service.auth.principal import Principal
from service.auth.service import KeyService
from service.errors import AUTHENTICATED, Conflict, NotFound, problem_responses
from service.pagination import Cursor, Page, PageLimit
from service.tenants.models import Tenant, TenantId, TenantStatus
from service.tenants.service import TenantService


class CreateTenantRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: TenantId
    display_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


class AdminController(Controller):
    path = "/api/v1/admin"
    tags = ["admin"]
    guards = [operator_only]

    @post(
        "/tenants",
        operation_id="createTenant",
        responses=problem_responses(*AUTHENTICATED, Conflict),
        summary="Create a tenant",
    )
    async def create_tenant(
        self,
        principal: NamedDependency[Principal],
        tenants: NamedDependency[TenantService],
        data: JSONBody[CreateTenantRequest],
    ) -> Tenant:
        return await tenants.create(data.id, data.display_name, actor=principal)

    @get(
        "/tenants",
        operation_id="listTenants",
        responses=problem_responses(*AUTHENTICATED),
        summary="List tenants",
    )
    async def list_tenants(
        self,
        tenants: NamedDependency[TenantService],
        limit: PageLimit = 100,
        cursor: Cursor = None,
        status: Annotated[
            TenantStatus | None, QueryParameter(description="Only tenants with this status")
        ] = None,
    ) -> Page[Tenant]:
        return await tenants.list_page(cursor=cursor, limit=limit, status=status)

    @get(
        "/tenants/{tenant_id:str}",
        operation_id="getTenant",
        responses=problem_responses(*AUTHENTICATED, NotFound),
        summary="One tenant",
    )
    async def get_tenant(self, tenants: NamedDependency[TenantService], tenant_id: FromPath[str]) -> Tenant:
        return await tenants.get(tenant_id)

    @post(
        "/tenants/{tenant_id:str}/suspend",
        operation_id="suspendTenant",
        responses=problem_responses(*AUTHENTICATED, NotFound),
        status_code=200,
        summary="Suspend a tenant: its keys get 403 until it is resumed",
    )
    async def suspend_tenant(
        self,
        principal: NamedDependency[Principal],
        tenants: NamedDependency[TenantService],
        tenant_id: FromPath[str],
    ) -> Tenant:
        return await tenants.set_status(tenant_id, TenantStatus.SUSPENDED, actor=principal)

    @post(
        "/tenants/{tenant_id:str}/resume",
        operation_id="resumeTenant",
        responses=problem_responses(*AUTHENTICATED, NotFound),
        status_code=200,
        summary="Resume a suspended tenant",
    )
    async def resume_tenant(
        self,
        principal: NamedDependency[Principal],
        tenants: NamedDependency[TenantService],
        tenant_id: FromPath[str],
    ) -> Tenant:
        return await tenants.set_status(tenant_id, TenantStatus.ACTIVE, actor=principal)

    @post(
        "/tenants/{tenant_id:str}/keys",
        operation_id="createTenantKey",
        responses=problem_responses(*AUTHENTICATED, NotFound),
        summary="Create an API key for a tenant (the key is shown only in this response)",
    )
    async def create_tenant_key(
        self,
        principal: NamedDependency[Principal],
        keys: NamedDependency[KeyService],
        tenant_id: FromPath[str],
        data: JSONBody[CreateKeyRequest],
    ) -> CreatedApiKey:
        return await keys.create(tenant_id, data, actor=principal)

    @get(
        "/tenants/{tenant_id:str}/keys",
        operation_id="listTenantKeys",
        responses=problem_responses(*AUTHENTICATED, NotFound),
        summary="List a tenant's API keys",
    )
    async def list_tenant_keys(
        self,
        tenants: NamedDependency[TenantService],
        keys: NamedDependency[KeyService],
        tenant_id: FromPath[str],
        limit: PageLimit = 100,
        cursor: Cursor = None,
    ) -> Page[ApiKey]:
        await tenants.get(tenant_id)
        return await keys.list_page(tenant_id, cursor=cursor, limit=limit)

    @delete(
        "/tenants/{tenant_id:str}/keys/{key_id:str}",
        operation_id="revokeTenantKey",
        responses=problem_responses(*AUTHENTICATED, NotFound),
        status_code=200,
        summary="Revoke one of a tenant's API keys",
    )
    async def revoke_tenant_key(
        self,
        principal: NamedDependency[Principal],
        keys: NamedDependency[KeyService],
        tenant_id: FromPath[str],
        key_id: FromPath[str],
    ) -> ApiKey:
        return await keys.revoke(tenant_id, key_id, actor=principal)
