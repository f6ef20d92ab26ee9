"""/api/v1/cluster: health, tenants with quotas and usage, usage, key validation. Operators only.
(The audit log's operator route, /api/v1/cluster/audit, is in service/audit/controller.py.)"""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter

from service.auth.guards import operator_only
from service.auth.models import KeyStatus
from service.cluster.models import ClusterHealth, ClusterTenant, ValidateKeyRequest
from service.cluster.service import ClusterHealthService, ClusterService
from service.errors import AUTHENTICATED, NotFound, ServiceUnavailable, problem_responses
from service.pagination import Cursor, Page, PageLimit
from service.quota.usage import TenantUsage
from service.tenants.models import TenantFilter, TenantStatus
from service.timerange import Since, Until, parse_time


class ClusterController(Controller):
    path = "/api/v1/cluster"
    tags = ["cluster"]
    guards = [operator_only]

    @get(
        "/health",
        operation_id="getClusterHealth",
        responses=problem_responses(*AUTHENTICATED),
        summary="Database, HiveHub reachability, rate-limit storage, background jobs, version",
    )
    async def health(self, cluster_health: NamedDependency[ClusterHealthService]) -> ClusterHealth:
        return await cluster_health.health()

    @get(
        "/tenants",
        operation_id="listClusterTenants",
        responses=problem_responses(*AUTHENTICATED),
        summary="Tenants with the limits in force and their usage (last 30 days) and storage",
    )
    async def tenants(
        self,
        cluster: NamedDependency[ClusterService],
        limit: PageLimit = 100,
        cursor: Cursor = None,
        status: Annotated[
            TenantStatus | None, QueryParameter(description="Only tenants with this status")
        ] = None,
    ) -> Page[ClusterTenant]:
        return await cluster.tenants_page(status=status, cursor=cursor, limit=limit)

    @get(
        "/usage",
        operation_id="getClusterUsage",
        responses=problem_responses(*AUTHENTICATED, NotFound),
        summary="Usage per tenant, filtered by tenant and time range",
    )
    async def usage(
        self,
        cluster: NamedDependency[ClusterService],
        tenant_id: TenantFilter = None,
        since: Since = None,
        until: Until = None,
        limit: PageLimit = 100,
        cursor: Cursor = None,
    ) -> Page[TenantUsage]:
        return await cluster.usage_page(
            tenant_id=tenant_id,
            since=parse_time("since", since),
            until=parse_time("until", until),
            cursor=cursor,
            limit=limit,
        )

    @post(
        "/keys/validate",
        operation_id="validateKey",
        status_code=200,
        responses=problem_responses(*AUTHENTICATED, ServiceUnavailable),
        summary="A key's tenant, permission and status (never its hash); HiveHub keys are asked of HiveHub",
    )
    async def validate_key(
        self, cluster: NamedDependency[ClusterService], data: JSONBody[ValidateKeyRequest]
    ) -> KeyStatus:
        return await cluster.inspect_key(data.key)
