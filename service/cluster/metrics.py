"""GET /metrics (Prometheus text): on the API port for operator keys, or on a separate port."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Controller, Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.auth.guards import operator_only
from service.db import Database
from service.errors import AUTHENTICATED, problem_responses
from service.metrics import TENANT_STORAGE_BYTES, exposition_registry
from service.quota import store

log = logging.getLogger("vectorhive.metrics")


async def refresh_storage_gauges(db: Database) -> None:
    """vectorhive_tenant_storage_bytes for every tenant that has collections."""
    async with db.pool.acquire() as conn:
        storage = await store.storage_by_tenant(conn)
    for tenant_id, (_, _, size) in storage.items():
        TENANT_STORAGE_BYTES.labels(tenant_id).set(size)


class MetricsController(Controller):
    tags = ["metrics"]

    @get(
        "/metrics",
        operation_id="getMetrics",
        guards=[operator_only],
        responses=problem_responses(*AUTHENTICATED),
        media_type="text/plain",
        summary="Prometheus metrics (operator key)",
    )
    async def metrics(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        try:
            await refresh_storage_gauges(request.app.state.db)
        except Exception:
            log.warning("could not refresh the storage gauges", exc_info=True)
        return Response(generate_latest(exposition_registry()), media_type=CONTENT_TYPE_LATEST)
