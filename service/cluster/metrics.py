"""GET /metrics (Prometheus text): on the API port for operator keys, or on a separate port."""

from __future__ import annotations

import logging

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.auth.guards import operator_only
from service.db import Database
from service.db.connections import service_connection
from service.errors import AUTHENTICATED, problem_responses
from service.metrics import TENANT_STORAGE_BYTES, exposition_registry
from service.quota import store

log = logging.getLogger("vectorhive.metrics")


class StorageGauges:
    """vectorhive_tenant_storage_bytes for every tenant that has collections."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def refresh(self) -> None:
        storage = await store.storage_by_tenant(service_connection(self.db.pool))
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
    async def metrics(self, storage_gauges: NamedDependency[StorageGauges]) -> Response[bytes]:
        try:
            await storage_gauges.refresh()
        except Exception:
            log.warning("could not refresh the storage gauges", exc_info=True)
        return Response(generate_latest(exposition_registry()), media_type=CONTENT_TYPE_LATEST)
