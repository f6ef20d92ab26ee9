"""The HiveHub client: key validation, tenant quotas, usage reports (contract: docs/hivehub.md).

Every call has a timeout (cluster.hivehub_timeout). Key validation is on a request's path, so it
is retried at most once and only after a connection failure; quota fetches and usage reports are
retried cluster.hivehub_retries times with jittered backoff. A failure raises HubUnavailable; the
callers decide what that means (an unknown key gets 503, quotas keep their last values, usage
stays in the outbox).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import UTC, datetime
from typing import Annotated

import httpx
import msgspec

from service import __version__
from service.config import ClusterSettings
from service.metrics import HUB_ERRORS, HUB_SECONDS, HUB_UP
from service.quota.models import HubQuotas

log = logging.getLogger("vectorhive.hivehub")


class HubUnavailable(Exception):
    """HiveHub could not be reached, timed out, or answered with something other than the contract."""


class HubRejected(HubUnavailable):
    """HiveHub answered 4xx (other than 429): it refuses what we sent; sending it again will not help."""


class KeyAnswer(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    valid: bool
    tenant_id: str | None = None
    tenant_name: str | None = None
    permission: str | None = None
    collections: list[str] | None = None
    # With its zone: a naive time would not compare with ours (and breaks the contract anyway).
    expires_at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    quotas: HubQuotas | None = None


class UsageReport(msgspec.Struct, kw_only=True):
    idempotency_key: str
    tenant_id: str
    metric: str
    operation: str
    quantity: int
    period_start: datetime
    period_end: datetime


class _UsageBody(msgspec.Struct, kw_only=True):
    reports: list[UsageReport]


class HubStatus(msgspec.Struct, kw_only=True):
    configured: bool
    url: str | None
    reachable: bool | None  # None: not called yet
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    last_error: str | None = None


class HiveHubClient:
    def __init__(self, settings: ClusterSettings) -> None:
        assert settings.hivehub_api_url is not None
        self.settings = settings
        self.base = settings.hivehub_api_url.rstrip("/")
        headers = {"User-Agent": f"vectorhive/{__version__}", "Accept": "application/json"}
        if settings.hivehub_api_key:
            headers["Authorization"] = f"Bearer {settings.hivehub_api_key}"
        self._client = httpx.AsyncClient(
            base_url=self.base,
            headers=headers,
            timeout=settings.hivehub_timeout,
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
        )
        self.status = HubStatus(configured=True, url=self.base, reachable=None)

    async def close(self) -> None:
        await self._client.aclose()

    def _ok(self) -> None:
        self.status.reachable = True
        self.status.last_success_at = datetime.now(UTC)
        HUB_UP.set(1)

    def _failed(self, endpoint: str, kind: str, message: str) -> None:
        self.status.reachable = False
        self.status.last_failure_at = datetime.now(UTC)
        self.status.last_error = message
        HUB_ERRORS.labels(endpoint, kind).inc()
        HUB_UP.set(0)
        log.warning("HiveHub call failed", extra={"endpoint": endpoint, "kind": kind, "error": message})

    async def _call(
        self, endpoint: str, method: str, path: str, *, body: bytes | None = None, retries: int
    ) -> bytes:
        """The response body of a 2xx; HubUnavailable otherwise (after the retries)."""
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                response = await self._client.request(
                    method,
                    path,
                    content=body,
                    headers={"Content-Type": "application/json"} if body is not None else None,
                )
                HUB_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
                if 200 <= response.status_code < 300:
                    self._ok()
                    return response.content
                kind, message = "status", f"HTTP {response.status_code} from {endpoint}"
                retryable = response.status_code >= 500 or response.status_code == 429
            except httpx.TimeoutException as exc:
                HUB_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
                kind, message, retryable = "timeout", f"{endpoint} timed out ({type(exc).__name__})", True
            except httpx.TransportError as exc:
                kind, message, retryable = "connect", f"{endpoint}: {type(exc).__name__}: {exc}", True
            self._failed(endpoint, kind, message)
            if not retryable or attempt >= retries:
                raise HubRejected(message) if kind == "status" and not retryable else HubUnavailable(message)
            attempt += 1
            await asyncio.sleep(min(2.0, 0.1 * 2**attempt) * (0.5 + random.random()))  # noqa: S311

    async def validate_key(self, key: str) -> KeyAnswer:
        # One retry, and only for a connection that failed before anything was sent (e.g. a pooled
        # connection the hub had closed): a timed-out hub is not asked again while a client waits.
        body = msgspec.json.encode({"key": key})
        try:
            raw = await self._call("validate", "POST", "/api/v1/keys/validate", body=body, retries=0)
        except HubUnavailable as exc:
            if "ConnectError" not in str(exc) and "RemoteProtocolError" not in str(exc):
                raise
            raw = await self._call("validate", "POST", "/api/v1/keys/validate", body=body, retries=0)
        try:
            return msgspec.json.decode(raw, type=KeyAnswer)
        except msgspec.DecodeError as exc:
            self._failed("validate", "contract", f"unusable validation answer: {exc}")
            raise HubUnavailable(
                f"HiveHub's key validation answer does not follow the contract: {exc}"
            ) from exc

    async def tenant_quotas(self, tenant_id: str) -> HubQuotas:
        raw = await self._call(
            "quotas", "GET", f"/api/v1/tenants/{tenant_id}/quotas", retries=self.settings.hivehub_retries
        )
        try:
            return msgspec.json.decode(raw, type=HubQuotas)
        except msgspec.DecodeError as exc:
            self._failed("quotas", "contract", f"unusable quota answer: {exc}")
            raise HubUnavailable(f"HiveHub's quota answer does not follow the contract: {exc}") from exc

    async def report_usage(self, reports: list[UsageReport]) -> None:
        body = msgspec.json.encode(_UsageBody(reports=reports))
        await self._call("usage", "POST", "/api/v1/usage", body=body, retries=self.settings.hivehub_retries)

    async def probe(self) -> bool:
        """Reachability for health: GET /api/v1/health answering below 500 (a hub without that
        endpoint answers 404, which still shows it is up)."""
        try:
            response = await self._client.get(
                "/api/v1/health", timeout=min(2.0, self.settings.hivehub_timeout)
            )
        except httpx.HTTPError as exc:
            self._failed("health", "connect", f"{type(exc).__name__}: {exc}")
            return False
        if response.status_code >= 500:
            self._failed("health", "status", f"HTTP {response.status_code} from health")
            return False
        self._ok()
        return True
