"""The audit routes: a tenant ADMIN's own trail (/api/v1/audit) and the operators' view of every
tenant's (/api/v1/cluster/audit)."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from service.audit.models import AuditPage
from service.audit.service import AuditService
from service.auth.guards import operator_only, requires
from service.auth.principal import Permission, TenantPrincipal
from service.errors import AUTHENTICATED, problem_responses
from service.pagination import Cursor, PageLimit
from service.tenants.models import TenantFilter
from service.timerange import Since, Until

Action = Annotated[
    str | None,
    QueryParameter(description="Only this action, or this family (e.g. 'key' for key.*)", max_length=64),
]


class AuditController(Controller):
    tags = ["usage"]

    @get(
        "/api/v1/audit",
        operation_id="listAuditEvents",
        guards=[requires(Permission.ADMIN)],
        responses=problem_responses(*AUTHENTICATED),
        summary="This tenant's audit trail: key changes, operator actions, failed authentications",
    )
    async def audit(
        self,
        tenant: NamedDependency[TenantPrincipal],
        audit: NamedDependency[AuditService],
        limit: PageLimit = 100,
        cursor: Cursor = None,
        action: Action = None,
        since: Since = None,
        until: Until = None,
    ) -> AuditPage:
        return await audit.page(
            tenant_id=tenant.tenant_id,
            only_tenant=True,
            action=action,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
            scope=tenant.collections,
        )


class ClusterAuditController(Controller):
    path = "/api/v1/cluster"
    tags = ["cluster"]
    guards = [operator_only]

    @get(
        "/audit",
        operation_id="listClusterAuditEvents",
        responses=problem_responses(*AUTHENTICATED),
        summary="The audit log: key changes, operator actions, failed authentications (newest first)",
    )
    async def audit(
        self,
        audit: NamedDependency[AuditService],
        tenant_id: TenantFilter = None,
        limit: PageLimit = 100,
        cursor: Cursor = None,
        action: Action = None,
        since: Since = None,
        until: Until = None,
    ) -> AuditPage:
        return await audit.page(
            tenant_id=tenant_id,
            only_tenant=False,
            action=action,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
