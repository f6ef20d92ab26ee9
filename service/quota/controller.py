"""A tenant's own usage; operators set a tenant's quotas."""

from __future__ import annotations

from litestar import Controller, get, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from service.auth.guards import operator_only, requires
from service.auth.principal import Permission, Principal, TenantPrincipal
from service.errors import AUTHENTICATED, NotFound, problem_responses
from service.quota.models import QuotaOverrides, TenantQuotas
from service.quota.service import QuotaService
from service.quota.usage import TenantUsage, UsageService
from service.timerange import Since, Until, parse_time


class UsageController(Controller):
    tags = ["usage"]

    @get(
        "/api/v1/usage",
        operation_id="getUsage",
        guards=[requires(Permission.READ_ONLY)],
        responses=problem_responses(*AUTHENTICATED),
        summary="This tenant's usage (requests by operation, vectors, searches) and storage",
    )
    async def usage(
        self,
        tenant: NamedDependency[TenantPrincipal],
        usage: NamedDependency[UsageService],
        since: Since = None,
        until: Until = None,
    ) -> TenantUsage:
        start, end = parse_time("since", since), parse_time("until", until)
        return (await usage.usage([tenant.tenant_id], since=start, until=end, scope=tenant.collections))[0]


class QuotasAdminController(Controller):
    path = "/api/v1/admin/tenants/{tenant_id:str}/quotas"
    tags = ["admin"]
    guards = [operator_only]

    @get(
        "",
        operation_id="getTenantQuotas",
        responses=problem_responses(*AUTHENTICATED, NotFound),
        summary="A tenant's quota overrides and the limits in force",
    )
    async def get_quotas(
        self, quotas: NamedDependency[QuotaService], tenant_id: FromPath[str]
    ) -> TenantQuotas:
        return await quotas.get_quotas(tenant_id)

    @put(
        "",
        operation_id="setTenantQuotas",
        responses=problem_responses(*AUTHENTICATED, NotFound),
        summary="Replace a tenant's quota overrides (null or absent: the configured default)",
    )
    async def set_quotas(
        self,
        principal: NamedDependency[Principal],
        quotas: NamedDependency[QuotaService],
        tenant_id: FromPath[str],
        data: JSONBody[QuotaOverrides],
    ) -> TenantQuotas:
        return await quotas.set_quotas(tenant_id, data, actor=principal)
