"""SQL of the cluster's health report (service login: every tenant)."""

from __future__ import annotations

from service.db import ServiceConnection


async def active_imports(conn: ServiceConnection) -> int:
    """Imports pending or loading on any replica (the statuses of service.imports.store.count_active)."""
    count: int = await conn.fetchval("SELECT count(*) FROM imports WHERE status IN ('pending', 'loading')")
    return count
