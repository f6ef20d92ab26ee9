"""What operators see of the cluster: this replica's health, tenants with limits and usage, keys."""

from __future__ import annotations

from datetime import datetime

from service import __version__
from service.auth.authenticator import Authenticator
from service.auth.models import KeyStatus
from service.cluster import store
from service.cluster.models import ClusterHealth, ClusterTenant, Component, ImportsStatus
from service.config import Settings
from service.db import Database
from service.db.connections import service_connection
from service.hivehub.client import HiveHubClient, HubStatus
from service.imports.runner import ImportRunner
from service.jobs import BackgroundJobs
from service.pagination import Page
from service.pool import pools
from service.quota.limiter import Limiter
from service.quota.service import QuotaService
from service.quota.usage import TenantUsage, UsageService
from service.tenants.models import Tenant, TenantStatus
from service.tenants.service import TenantService


class ClusterHealthService:
    """The dependencies of this replica, as GET /api/v1/cluster/health reports them."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        limiter: Limiter,
        jobs: BackgroundJobs,
        import_runner: ImportRunner,
        hub: HiveHubClient | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.limiter = limiter
        self.jobs = jobs
        self.import_runner = import_runner
        self.hub = hub

    async def health(self) -> ClusterHealth:
        try:
            await self.db.ping()
            database = Component(ok=True)
        except Exception as exc:
            database = Component(ok=False, detail=f"{type(exc).__name__}")
        if self.hub is not None:
            await self.hub.probe()
            hub_status = self.hub.status
        else:
            hub_status = HubStatus(configured=False, url=None, reachable=None)
        storage_ok = await self.limiter.ping()
        storage = Component(
            ok=storage_ok,
            detail=self.limiter.storage_uri.split("://")[0]
            + ("" if storage_ok else f": {self.limiter.last_error}"),
        )
        job_status = self.jobs.status()
        try:
            active = await store.active_imports(service_connection(self.db.pool))
        except Exception:
            active = -1  # the database is down: said above
        imports = ImportsStatus(
            portal_url=self.settings.s5.portal_url,
            runner_id=self.import_runner.runner_id,
            running_here=self.import_runner.active(),
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
            cluster_mode=self.settings.cluster.enabled,
            database=database,
            hivehub=hub_status,
            rate_limit_storage=storage,
            rate_limits_enabled=self.settings.rate_limits_enabled,
            background_jobs=job_status,
            imports=imports,
            pools=pools(),
        )


class ClusterService:
    """Tenants with their limits and usage, and keys as the authenticator sees them."""

    def __init__(
        self, tenants: TenantService, usage: UsageService, quotas: QuotaService, authenticator: Authenticator
    ) -> None:
        self.tenants = tenants
        self.usage = usage
        self.quotas = quotas
        self.authenticator = authenticator

    async def tenants_page(
        self, *, status: TenantStatus | None, cursor: str | None, limit: int
    ) -> Page[ClusterTenant]:
        page, figures, next_cursor = await self._usage_page(
            tenant_id=None, status=status, cursor=cursor, limit=limit, since=None, until=None
        )
        items = [
            ClusterTenant(tenant=t, limits=await self.quotas.limits_for(t.id), usage=u)
            for t, u in zip(page, figures, strict=True)
        ]
        return Page(items=items, next_cursor=next_cursor)

    async def usage_page(
        self,
        *,
        tenant_id: str | None,
        since: datetime | None,
        until: datetime | None,
        cursor: str | None,
        limit: int,
    ) -> Page[TenantUsage]:
        _, figures, next_cursor = await self._usage_page(
            tenant_id=tenant_id, status=None, cursor=cursor, limit=limit, since=since, until=until
        )
        return Page(items=figures, next_cursor=next_cursor)

    async def _usage_page(
        self,
        *,
        tenant_id: str | None,
        status: TenantStatus | None,
        cursor: str | None,
        limit: int,
        since: datetime | None,
        until: datetime | None,
    ) -> tuple[list[Tenant], list[TenantUsage], str | None]:
        if tenant_id is not None:
            page: list[Tenant] = [await self.tenants.get(tenant_id)]
            next_cursor = None
        else:
            found = await self.tenants.list_page(cursor=cursor, limit=limit, status=status)
            page, next_cursor = found.items, found.next_cursor
        figures = await self.usage.usage([t.id for t in page], since=since, until=until)
        return page, figures, next_cursor

    async def inspect_key(self, key: str) -> KeyStatus:
        return await self.authenticator.inspect(key)
