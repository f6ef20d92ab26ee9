"""SQL for quota overrides, storage figures and the usage outbox (service login; always by tenant)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec

from service.db import ServiceConnection, TenantConnection
from service.quota.models import QuotaOverrides

# The storage quota checks run on the writer's own connection, inside the transaction that will
# write: a tenant connection (vector upserts) or a service one (collection creation, the import
# merge). Either is safe here: the queries name the tenant themselves, and on a tenant connection
# row-level security on `collections` admits exactly the rows they name; the lock is advisory.
WriterConnection = TenantConnection | ServiceConnection

# -- quota overrides (tenants.quotas) ---------------------------------------------------------------


async def get_overrides(conn: ServiceConnection, tenant_id: str) -> QuotaOverrides | None:
    """None when the tenant does not exist."""
    raw = await conn.fetchval("SELECT quotas::text FROM tenants WHERE id = $1", tenant_id)
    if raw is None:
        return None
    return msgspec.json.decode(raw, type=QuotaOverrides)


async def set_overrides(conn: ServiceConnection, tenant_id: str, overrides: QuotaOverrides) -> bool:
    status = await conn.execute(
        "UPDATE tenants SET quotas = $2::jsonb, updated_at = now() WHERE id = $1",
        tenant_id,
        msgspec.json.encode(overrides).decode(),
    )
    return bool(status.endswith(" 1"))


# -- storage in use (inside the writer's transaction) ----------------------------------------------


async def lock_tenant_quota(conn: WriterConnection, tenant_id: str) -> None:
    """Serialise a tenant's quota-checked writes until the transaction ends (any role may do this)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('vectorhive-quota:' || $1, 0))", tenant_id
    )


async def collection_count(conn: WriterConnection, tenant_id: str) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM collections WHERE tenant_id = $1", tenant_id)
    return count


async def vectors_and_bytes(conn: WriterConnection, tenant_id: str) -> tuple[int, int]:
    row = await conn.fetchrow(
        """SELECT coalesce(sum(vector_count), 0)::bigint AS vectors,
                  coalesce(sum(pg_total_relation_size(to_regclass('vectors_' || id))), 0)::bigint AS bytes
           FROM collections WHERE tenant_id = $1""",
        tenant_id,
    )
    return int(row["vectors"]), int(row["bytes"])


async def storage_by_tenant(
    conn: ServiceConnection, tenant_ids: list[str] | None = None, collections: list[str] | None = None
) -> dict[str, tuple[int, int, int]]:
    """tenant -> (collections, vectors, bytes on disk), for tenants that have collections;
    collections: count only those (what a key limited to them may see)."""
    rows = await conn.fetch(
        """SELECT tenant_id, count(*) AS collections, coalesce(sum(vector_count), 0)::bigint AS vectors,
                  coalesce(sum(pg_total_relation_size(to_regclass('vectors_' || id))), 0)::bigint AS bytes
           FROM collections WHERE ($1::text[] IS NULL OR tenant_id = ANY($1))
             AND ($2::text[] IS NULL OR name = ANY($2))
           GROUP BY tenant_id""",
        tenant_ids,
        collections,
    )
    return {r["tenant_id"]: (int(r["collections"]), int(r["vectors"]), int(r["bytes"])) for r in rows}


# -- usage outbox -----------------------------------------------------------------------------------


async def insert_usage(
    conn: ServiceConnection,
    rows: list[tuple[str, str, str, int]],
    period_start: datetime,
    period_end: datetime,
) -> None:
    """rows: (tenant_id, metric, operation, quantity); each row gets its idempotency key here."""
    await conn.execute(
        """INSERT INTO usage_outbox (id, tenant_id, metric, operation, quantity, period_start, period_end)
           SELECT u.id, u.tenant_id, u.metric, u.operation, u.quantity, $6, $7
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[])
                AS u(id, tenant_id, metric, operation, quantity)""",
        [uuid.uuid4() for _ in rows],
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
        period_start,
        period_end,
    )


async def snapshot_storage(conn: ServiceConnection, min_age_seconds: float) -> int:
    """A `bytes_stored` row per HiveHub tenant (its bytes on disk now), unless one was written in
    the last min_age_seconds (by any replica: serialised by an advisory lock). Returns rows written."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('vectorhive-storage-snapshot', 0))")
    recent = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM usage_outbox WHERE metric = 'bytes_stored'
                          AND created_at > now() - make_interval(secs => $1))""",
        min_age_seconds,
    )
    if recent:
        return 0
    status: str = await conn.execute(
        """INSERT INTO usage_outbox (id, tenant_id, metric, operation, quantity, period_start, period_end)
           SELECT gen_random_uuid(), t.id, 'bytes_stored', '', coalesce(sum(
                      pg_total_relation_size(to_regclass('vectors_' || c.id))), 0)::bigint, now(), now()
           FROM tenants t LEFT JOIN collections c ON c.tenant_id = t.id
           WHERE t.source = 'hivehub'
           GROUP BY t.id"""
    )
    return int(status.rsplit(" ", 1)[1])


async def claim_unsent(conn: ServiceConnection, limit: int) -> list[Any]:
    """The oldest unsent rows of HiveHub's tenants, locked for this transaction; other replicas skip
    them. Local tenants' usage stays here (GET /api/v1/usage): the hub does not know those tenants."""
    rows: list[Any] = await conn.fetch(
        """SELECT id, tenant_id, metric, operation, quantity, period_start, period_end
           FROM usage_outbox
           WHERE sent_at IS NULL AND rejected_at IS NULL
             AND tenant_id IN (SELECT id FROM tenants WHERE source = 'hivehub')
           ORDER BY created_at, id
           LIMIT $1 FOR UPDATE OF usage_outbox SKIP LOCKED""",
        limit,
    )
    return rows


async def mark_sent(conn: ServiceConnection, ids: list[uuid.UUID]) -> None:
    await conn.execute(
        "UPDATE usage_outbox SET sent_at = now(), attempts = attempts + 1 WHERE id = ANY($1::uuid[])", ids
    )


async def mark_rejected(conn: ServiceConnection, row_id: uuid.UUID, reason: str) -> None:
    await conn.execute(
        """UPDATE usage_outbox SET rejected_at = now(), rejected_reason = $2, attempts = attempts + 1
           WHERE id = $1""",
        row_id,
        reason,
    )


async def unsent_count(conn: ServiceConnection) -> int:
    """Rows still to report to HiveHub (its tenants' rows, neither sent nor rejected)."""
    count: int = await conn.fetchval(
        """SELECT count(*) FROM usage_outbox
           WHERE sent_at IS NULL AND rejected_at IS NULL
             AND tenant_id IN (SELECT id FROM tenants WHERE source = 'hivehub')"""
    )
    return count


async def usage_totals(
    conn: ServiceConnection, *, tenant_ids: list[str] | None, since: datetime, until: datetime
) -> list[Any]:
    """Summed outbox rows whose period started in [since, until), by tenant, metric and operation."""
    rows: list[Any] = await conn.fetch(
        """SELECT tenant_id, metric, operation, sum(quantity)::bigint AS quantity
           FROM usage_outbox
           WHERE ($1::text[] IS NULL OR tenant_id = ANY($1)) AND period_start >= $2 AND period_start < $3
           GROUP BY tenant_id, metric, operation""",
        tenant_ids,
        since,
        until,
    )
    return rows


async def prune_usage(conn: ServiceConnection, *, days: int, batch: int = 10_000) -> int:
    """Delete a batch of old usage rows (never rows HiveHub still waits for); returns how many went
    (call again while it returns full batches)."""
    status: str = await conn.execute(
        """DELETE FROM usage_outbox WHERE id IN (
               SELECT u.id FROM usage_outbox u LEFT JOIN tenants t ON t.id = u.tenant_id
               WHERE u.created_at < now() - make_interval(days => $1)
                 AND (u.sent_at IS NOT NULL OR u.rejected_at IS NOT NULL
                      OR t.source IS DISTINCT FROM 'hivehub')
               LIMIT $2)""",
        days,
        batch,
    )
    return int(status.rsplit(" ", 1)[1])
