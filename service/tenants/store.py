"""SQL for the tenants table."""

from __future__ import annotations

from typing import Any

from service.db import ServiceConnection
from service.tenants.models import Tenant, TenantStatus

_COLUMNS = "id, display_name, status, created_at, updated_at"


def _tenant(row: Any) -> Tenant:
    return Tenant(
        id=row["id"],
        display_name=row["display_name"],
        status=TenantStatus(row["status"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def insert(
    conn: ServiceConnection, tenant_id: str, display_name: str, *, source: str = "local"
) -> Tenant | None:
    """None when the id is taken."""
    row = await conn.fetchrow(
        f"""INSERT INTO tenants (id, display_name, source) VALUES ($1, $2, $3)
            ON CONFLICT (id) DO NOTHING RETURNING {_COLUMNS}""",
        tenant_id,
        display_name,
        source,
    )
    return _tenant(row) if row else None


async def ensure(conn: ServiceConnection, tenant_id: str, display_name: str) -> None:
    await conn.execute(
        "INSERT INTO tenants (id, display_name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        tenant_id,
        display_name,
    )


async def status_and_source(conn: ServiceConnection, tenant_id: str) -> tuple[str, str] | None:
    """(status, source) of a tenant: source "hivehub" for tenants HiveHub introduced, else "local"."""
    row = await conn.fetchrow("SELECT status, source FROM tenants WHERE id = $1", tenant_id)
    return (row["status"], row["source"]) if row else None


async def get(conn: ServiceConnection, tenant_id: str) -> Tenant | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM tenants WHERE id = $1", tenant_id)
    return _tenant(row) if row else None


async def list_page(
    conn: ServiceConnection, *, after: str | None, limit: int, status: TenantStatus | None
) -> list[Tenant]:
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM tenants
            WHERE ($1::text IS NULL OR id > $1) AND ($2::text IS NULL OR status = $2)
            ORDER BY id LIMIT $3""",
        after,
        status.value if status else None,
        limit,
    )
    return [_tenant(r) for r in rows]


async def set_status(conn: ServiceConnection, tenant_id: str, status: TenantStatus) -> Tenant | None:
    row = await conn.fetchrow(
        f"UPDATE tenants SET status = $2, updated_at = now() WHERE id = $1 RETURNING {_COLUMNS}",
        tenant_id,
        status.value,
    )
    return _tenant(row) if row else None
