"""The audit log: key creation, rotation and revocation, operator actions, authentication failures.

Key and tenant changes are written in the transaction that makes them (an audit row exists exactly
when the change does). Authentication failures happen on the request path and can come in floods,
so they are buffered in memory (bounded) and written with the usage flush.
"""

from __future__ import annotations

import logging
from collections import deque
from datetime import datetime
from typing import Any

import msgspec

from service.auth.principal import Principal

log = logging.getLogger("vectorhive.audit")

_MAX_BUFFERED = 10_000


class AuditEvent(msgspec.Struct, kw_only=True):
    id: int
    at: datetime
    tenant_id: str | None
    actor_kind: str
    actor_key_id: str | None
    action: str
    target: str | None
    outcome: str
    details: dict[str, Any]
    request_id: str | None


def actor_of(principal: Principal | None) -> tuple[str, str | None]:
    if principal is None:
        return "cli", None
    return ("operator" if principal.is_operator else "tenant"), principal.key_id


async def write(
    conn: Any,
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


class AuditBuffer:
    """Authentication failures, written in batches (oldest dropped beyond 10,000 pending)."""

    def __init__(self) -> None:
        self._pending: deque[tuple[Any, ...]] = deque(maxlen=_MAX_BUFFERED)

    def auth_failure(self, reason: str, *, key_id: str | None, tenant_id: str | None) -> None:
        self._pending.append((tenant_id, key_id, reason))

    async def flush(self, pool: Any) -> None:
        if not self._pending:
            return
        items = list(self._pending)
        self._pending.clear()
        try:
            await pool.execute(
                """INSERT INTO audit_log (tenant_id, actor_kind, actor_key_id, action, outcome, details)
                   SELECT u.tenant_id, 'anonymous', u.key_id, 'auth.failure', 'denied',
                          jsonb_build_object('reason', u.reason)
                   FROM unnest($1::text[], $2::text[], $3::text[]) AS u(tenant_id, key_id, reason)""",
                [i[0] for i in items],
                [i[1] for i in items],
                [i[2] for i in items],
            )
        except Exception:
            log.warning("could not write authentication failures to the audit log", exc_info=True)
            self._pending.extendleft(reversed(items))


async def list_events(
    conn: Any,
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
