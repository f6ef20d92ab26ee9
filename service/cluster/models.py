"""What the cluster routes answer and take."""

from __future__ import annotations

from typing import Annotated

import msgspec

from service.hivehub.client import HubStatus
from service.jobs import JobStatus
from service.pool import PoolStats
from service.quota.models import TenantLimits
from service.quota.usage import TenantUsage
from service.tenants.models import Tenant


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
