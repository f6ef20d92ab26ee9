"""Per-route middleware after authentication: a tenant's window limits, then its request metering.

Operators are neither limited nor metered. The operation is the route's operation_id (a fixed,
bounded set), never the raw path.
"""

from __future__ import annotations

from typing import Any

from litestar.types import ASGIApp, Receive, Scope, Send

from service.auth.principal import Principal
from service.metrics import TENANT_REQUESTS
from service.quota.service import QuotaService
from service.quota.usage import UsageMeter


def operation_of(scope: Scope) -> str:
    handler: Any = scope.get("route_handler")
    operation = getattr(handler, "operation_id", None)
    if isinstance(operation, str):
        return operation
    return str(getattr(handler, "handler_name", "unknown"))


class TenantRequests:
    """Each tenant request: its window limits checked (429 past them), counted and metered."""

    def __init__(self, quotas: QuotaService, meter: UsageMeter) -> None:
        self.quotas = quotas
        self.meter = meter
        # (tenant, operation) -> the counter's child (prometheus keeps every child anyway): a label
        # lookup costs more than the increment, on every request.
        self._requests: dict[tuple[str, str], Any] = {}

    async def admit(self, principal: object, operation: str) -> None:
        """Operators and unauthenticated callers pass untouched."""
        if isinstance(principal, Principal) and principal.tenant_id is not None and not principal.is_operator:
            tenant_id = principal.tenant_id
            await self.quotas.check_request(tenant_id)
            counter = self._requests.get((tenant_id, operation))
            if counter is None:
                counter = self._requests[(tenant_id, operation)] = TENANT_REQUESTS.labels(
                    tenant_id, operation
                )
            counter.inc()
            self.meter.record(tenant_id, "requests", 1, operation)


class TenantLimitsMiddleware:
    def __init__(self, app: ASGIApp, requests: TenantRequests) -> None:
        self.app = app
        self.requests = requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.requests.admit(scope.get("user"), operation_of(scope))
        await self.app(scope, receive, send)
