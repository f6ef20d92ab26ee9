"""A tenant's own usage and audit trail; operators set a tenant's quotas."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from service.auth.controller import Cursor, PageLimit
from service.auth.guards import operator_only, requires
from service.auth.principal import Permission, Principal
from service.cluster.audit import AuditEvent, list_events
from service.errors import AUTHENTICATED, InvalidRequest, problem_responses
from service.pagination import decode_cursor, encode_cursor, invalid_cursor
from service.quota.models import QuotaOverrides, TenantQuotas
from service.quota.service import QuotaService
from service.quota.usage import TenantUsage, UsageService

Since = Annotated[
    str | None,
    QueryParameter(
        description="From this time: RFC 3339 with a zone, e.g. 2026-11-01T00:00:00Z (default: 30 days "
        "before until)",
        max_length=64,
    ),
]
Until = Annotated[
    str | None,
    QueryParameter(description="Before this time: RFC 3339 with a zone (default: now)", max_length=64),
]


def parse_time(name: str, value: str | None) -> datetime | None:
    """An RFC 3339 time with a zone, or a 400 naming the parameter."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise InvalidRequest(
            f"{name} must be an RFC 3339 time with a zone, e.g. 2026-11-01T00:00:00Z",
            errors=[{"field": name, "source": "query", "message": "not an RFC 3339 time with a zone"}],
        )
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:00:00-05:00 is past the year 9999 in UTC
        raise InvalidRequest(
            f"{name} is outside the years 1 to 9999 in UTC",
            errors=[{"field": name, "source": "query", "message": "out of range"}],
        ) from None


Action = Annotated[
    str | None,
    QueryParameter(description="Only this action, or this family (e.g. 'key' for key.*)", max_length=64),
]


class AuditPage(msgspec.Struct, kw_only=True):
    items: list[AuditEvent]
    next_cursor: str | None = None


async def audit_page(
    request: Request[Any, Any, Any],
    *,
    tenant_id: str | None,
    only_tenant: bool,
    action: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    cursor: str | None,
    scope: frozenset[str] | None = None,
) -> AuditPage:
    """scope: the asking key's collections; events whose details name others (or all) are left out."""
    raw = decode_cursor(cursor)
    # ASCII digits only ('²'.isdigit() is true, int('²') fails), and within PostgreSQL's bigint.
    if raw is not None and not (re.fullmatch(r"[0-9]{1,19}", raw) and int(raw) < 2**63):
        raise invalid_cursor()
    start, end = parse_time("since", since), parse_time("until", until)
    await request.app.state.audit_buffer.flush(request.app.state.db.pool)  # this replica's latest too
    async with request.app.state.db.pool.acquire() as conn:
        events = await list_events(
            conn,
            tenant_id=tenant_id,
            only_tenant=only_tenant,
            action=action,
            since=start,
            until=end,
            before_id=int(raw) if raw is not None else None,
            limit=limit + 1,
        )
    more = len(events) > limit
    events = events[:limit]
    cursor_out = encode_cursor(str(events[-1].id)) if more else None
    if scope is not None:
        # The cursor still follows the unfiltered events, so a page may hold fewer than `limit`.
        events = [e for e in events if _within_scope(e, scope)]
    return AuditPage(items=events, next_cursor=cursor_out)


def _within_scope(event: AuditEvent, scope: frozenset[str]) -> bool:
    if "collections" not in event.details:
        return True
    named = event.details["collections"]
    return isinstance(named, list) and set(named) <= scope


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
        principal: NamedDependency[Principal],
        usage: NamedDependency[UsageService],
        since: Since = None,
        until: Until = None,
    ) -> TenantUsage:
        assert principal.tenant_id is not None
        start, end = parse_time("since", since), parse_time("until", until)
        return (
            await usage.usage([principal.tenant_id], since=start, until=end, scope=principal.collections)
        )[0]

    @get(
        "/api/v1/audit",
        operation_id="listAuditEvents",
        guards=[requires(Permission.ADMIN)],
        responses=problem_responses(*AUTHENTICATED),
        summary="This tenant's audit trail: key changes, operator actions, failed authentications",
    )
    async def audit(
        self,
        request: Request[Any, Any, Any],
        principal: NamedDependency[Principal],
        limit: PageLimit = 100,
        cursor: Cursor = None,
        action: Action = None,
        since: Since = None,
        until: Until = None,
    ) -> AuditPage:
        return await audit_page(
            request,
            tenant_id=principal.tenant_id,
            only_tenant=True,
            action=action,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
            scope=principal.collections,
        )


class QuotasAdminController(Controller):
    path = "/api/v1/admin/tenants/{tenant_id:str}/quotas"
    tags = ["admin"]
    guards = [operator_only]

    @get(
        "",
        operation_id="getTenantQuotas",
        responses=problem_responses(*AUTHENTICATED, 404),
        summary="A tenant's quota overrides and the limits in force",
    )
    async def get_quotas(
        self, quotas: NamedDependency[QuotaService], tenant_id: FromPath[str]
    ) -> TenantQuotas:
        return await quotas.get_quotas(tenant_id)

    @put(
        "",
        operation_id="setTenantQuotas",
        responses=problem_responses(*AUTHENTICATED, 404),
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
