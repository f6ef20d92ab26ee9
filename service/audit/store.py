"""SQL for the audit_log table (service bookkeeping: a service connection, every tenant's rows).

Key and tenant changes are written in the transaction that makes them (an audit row exists exactly
when the change does); authentication failures come in batches from service.audit.service.AuditBuffer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from service.audit.models import AuditEvent
from service.auth.principal import Principal
from service.db import ServiceConnection


def actor_of(principal: Principal | None) -> tuple[str, str | None]:
    if principal is None:
        return "cli", None
    return ("operator" if principal.is_operator else "tenant"), principal.key_id


async def write(
    conn: ServiceConnection,
    *,
    action: str,
    tenant_id: str | None,
    actor: Principal | None,
    target: str | None = None,
    outcome: str = "ok",
    details: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> None:
    kind, key_id = actor_of(actor)
    await conn.execute(
        """INSERT INTO audit_log (tenant_id, actor_kind, actor_key_id, action, target, outcome, details,
                                  request_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)""",
        tenant_id,
        kind,
        key_id,
        action,
        target,
        outcome,
        msgspec.json.encode(details or {}).decode(),
        request_id,
    )


async def write_auth_failures(
    conn: ServiceConnection, failures: list[tuple[str | None, str | None, str]]
) -> None:
    """failures: (tenant_id, key_id, reason) of anonymous callers whose authentication failed."""
    await conn.execute(
        """INSERT INTO audit_log (tenant_id, actor_kind, actor_key_id, action, outcome, details)
           SELECT u.tenant_id, 'anonymous', u.key_id, 'auth.failure', 'denied',
                  jsonb_build_object('reason', u.reason)
           FROM unnest($1::text[], $2::text[], $3::text[]) AS u(tenant_id, key_id, reason)""",
        [f[0] for f in failures],
        [f[1] for f in failures],
        [f[2] for f in failures],
    )


async def list_events(
    conn: ServiceConnection,
    *,
    tenant_id: str | None,
    only_tenant: bool,
    action: str | None,
    since: datetime | None,
    until: datetime | None,
    before_id: int | None,
    limit: int,
) -> list[AuditEvent]:
    """Newest first. only_tenant: exactly this tenant's events (a tenant ADMIN's view)."""
    rows = await conn.fetch(
        """SELECT id, at, tenant_id, actor_kind, actor_key_id, action, target, outcome,
                  details::text AS details, request_id
           FROM audit_log
           WHERE ($1::text IS NULL OR tenant_id = $1) AND (NOT $2 OR tenant_id IS NOT NULL)
             AND ($3::text IS NULL OR action = $3 OR action LIKE $3 || '.%')
             AND ($4::timestamptz IS NULL OR at >= $4) AND ($5::timestamptz IS NULL OR at < $5)
             AND ($6::bigint IS NULL OR id < $6)
           ORDER BY id DESC LIMIT $7""",
        tenant_id,
        only_tenant,
        action,
        since,
        until,
        before_id,
        limit,
    )
    return [AuditEvent(**{**dict(r), "details": msgspec.json.decode(r["details"])}) for r in rows]


async def prune(conn: ServiceConnection, *, days: int, batch: int = 10_000) -> int:
    """Delete a batch of audit entries older than `days`; returns how many went (call again while
    it returns full batches)."""
    status: str = await conn.execute(
        """DELETE FROM audit_log WHERE id IN (
               SELECT id FROM audit_log WHERE at < now() - make_interval(days => $1) LIMIT $2)""",
        days,
        batch,
    )
    return int(status.rsplit(" ", 1)[1])
