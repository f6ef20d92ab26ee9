"""/api/v1/cluster: health, tenants with quotas and usage, usage, key validation, audit. Operators only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter

from service import __version__
from service.auth.controller import Cursor, PageLimit
from service.auth.guards import operator_only
from service.auth.hivehub import HiveHubClient, HubStatus
from service.auth.service import Authenticator, KeyStatus
from service.cluster.jobs import BackgroundJobs, JobStatus
from service.db import Database
from service.errors import AUTHENTICATED, problem_responses
from service.imports.runner import ImportRunner
from service.pagination import Page
from service.pool import PoolStats, pools
from service.quota.controller import Action, AuditPage, Since, Until, audit_page, parse_time
from service.quota.limiter import Limiter
from service.quota.models import TenantLimits
from service.quota.service import QuotaService
from service.quota.usage import TenantUsage, UsageService
from service.tenants.models import TENANT_ID_PATTERN, Tenant, TenantStatus
from service.tenants.service import TenantService


class Component(msgspec.Struct, kw_only=True):
    ok: bool
    detail: str | None = None


class ImportsStatus(msgspec.Struct, kw_only=True):
    """S5 imports: whether a portal is configured, and the imports pending or loading."""

    portal_url: str | None
    runner_id: int  # this process's lease (imports it runs carry it)
    running_here: int
    active_in_cluster: int


class ClusterHealth(msgspec.Struct, kw_only=True):
    status: str  # ok | degraded
    version: str
    cluster_mode: bool
    database: Component
    hivehub: HubStatus
    rate_limit_storage: Component
    # rate_limiting.enabled as in force (unset: on in cluster mode only).
    rate_limits_enabled: bool
    background_jobs: list[JobStatus]
    imports: ImportsStatus
    # This process's tenant-aware caches (service.pool): size, hits, misses, evictions, expirations.
    pools: list[PoolStats] = msgspec.field(default_factory=list)


class ClusterTenant(msgspec.Struct, kw_only=True):
    tenant: Tenant
    limits: TenantLimits
    usage: TenantUsage


class ValidateKeyRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    key: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]


TenantFilter = Annotated[
    str | None, QueryParameter(description="Only this tenant", pattern=TENANT_ID_PATTERN, max_length=63)
]


async def _tenant_usage_page(
    tenants: TenantService,
    usage: UsageService,
    *,
    tenant_id: str | None,
    status: TenantStatus | None,
    cursor: str | None,
    limit: int,
    since: datetime | None,
    until: datetime | None,
) -> tuple[list[Tenant], list[TenantUsage], str | None]:
    if tenant_id is not None:
        page: list[Tenant] = [await tenants.get(tenant_id)]
        next_cursor = None
    else:
        found = await tenants.list_page(cursor=cursor, limit=limit, status=status)
        page, next_cursor = found.items, found.next_cursor
    figures = await usage.usage([t.id for t in page], since=since, until=until)
    return page, figures, next_cursor


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
    async def health(self, request: Request[Any, Any, Any]) -> ClusterHealth:
        state = request.app.state
        db: Database = state.db
        hub: HiveHubClient | None = state.hivehub
        limiter: Limiter = state.limiter
        jobs: BackgroundJobs = state.jobs
        try:
            await db.ping()
            database = Component(ok=True)
        except Exception as exc:
            database = Component(ok=False, detail=f"{type(exc).__name__}")
        if hub is not None:
            await hub.probe()
            hub_status = hub.status
        else:
            hub_status = HubStatus(configured=False, url=None, reachable=None)
        storage_ok = await limiter.ping()
        storage = Component(
            ok=storage_ok,
            detail=limiter.storage_uri.split("://")[0] + ("" if storage_ok else f": {limiter.last_error}"),
        )
        job_status = jobs.status()
        runner: ImportRunner = state.import_runner
        try:
            active = await db.pool.fetchval(
                "SELECT count(*) FROM imports WHERE status IN ('pending', 'loading')"
            )
        except Exception:
            active = -1  # the database is down: said above
        imports = ImportsStatus(
            portal_url=state.settings.s5.portal_url,
            runner_id=runner.runner_id,
            running_here=runner.active(),
            active_in_cluster=active,
        )
        healthy = (
            database.ok
            and storage.ok
            and hub_status.reachable is not False
            and all(j.running for j in job_status)
        )
        return ClusterHealth(
            status="ok" if healthy else "degraded",
            version=__version__,
            cluster_mode=state.settings.cluster.enabled,
            database=database,
            hivehub=hub_status,
            rate_limit_storage=storage,
            rate_limits_enabled=state.settings.rate_limits_enabled,
            background_jobs=job_status,
            imports=imports,
            pools=pools(),
        )

    @get(
        "/tenants",
        operation_id="listClusterTenants",
        responses=problem_responses(*AUTHENTICATED),
        summary="Tenants with the limits in force and their usage (last 30 days) and storage",
    )
    async def tenants(
        self,
        tenants: NamedDependency[TenantService],
        usage: NamedDependency[UsageService],
        quotas: NamedDependency[QuotaService],
        limit: PageLimit = 100,
        cursor: Cursor = None,
        status: Annotated[
            TenantStatus | None, QueryParameter(description="Only tenants with this status")
        ] = None,
    ) -> Page[ClusterTenant]:
        page, figures, next_cursor = await _tenant_usage_page(
            tenants, usage, tenant_id=None, status=status, cursor=cursor, limit=limit, since=None, until=None
        )
        items = [
            ClusterTenant(tenant=t, limits=await quotas.limits_for(t.id), usage=u)
            for t, u in zip(page, figures, strict=True)
        ]
        return Page(items=items, next_cursor=next_cursor)

    @get(
        "/usage",
        operation_id="getClusterUsage",
        responses=problem_responses(*AUTHENTICATED, 404),
        summary="Usage per tenant, filtered by tenant and time range",
    )
    async def usage(
        self,
        tenants: NamedDependency[TenantService],
        usage: NamedDependency[UsageService],
        tenant_id: TenantFilter = None,
        since: Since = None,
        until: Until = None,
        limit: PageLimit = 100,
        cursor: Cursor = None,
    ) -> Page[TenantUsage]:
        _, figures, next_cursor = await _tenant_usage_page(
            tenants,
            usage,
            tenant_id=tenant_id,
            status=None,
            cursor=cursor,
            limit=limit,
            since=parse_time("since", since),
            until=parse_time("until", until),
        )
        return Page(items=figures, next_cursor=next_cursor)

    @post(
        "/keys/validate",
        operation_id="validateKey",
        status_code=200,
        responses=problem_responses(*AUTHENTICATED, 503),
        summary="A key's tenant, permission and status (never its hash); HiveHub keys are asked of HiveHub",
    )
    async def validate_key(
        self, request: Request[Any, Any, Any], data: JSONBody[ValidateKeyRequest]
    ) -> KeyStatus:
        authenticator: Authenticator = request.app.state.authenticator
        return await authenticator.inspect(data.key)

    @get(
        "/audit",
        operation_id="listClusterAuditEvents",
        responses=problem_responses(*AUTHENTICATED),
        summary="The audit log: key changes, operator actions, failed authentications (newest first)",
    )
    async def audit(
        self,
        request: Request[Any, Any, Any],
        tenant_id: TenantFilter = None,
        limit: PageLimit = 100,
        cursor: Cursor = None,
        action: Action = None,
        since: Since = None,
        until: Until = None,
    ) -> AuditPage:
        return await audit_page(
            request,
            tenant_id=tenant_id,
            only_tenant=False,
            action=action,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
