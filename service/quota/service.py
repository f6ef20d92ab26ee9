"""Quotas and rate limits per tenant: what is in force, and the checks that enforce it.

The API other features call (imports, embeddings):

    await quotas.check_request(tenant_id)                  # window limits; raises TooManyRequests
    await quotas.charge(tenant_id, "import", n_vectors)     # token bucket; raises TooManyRequests
    await quotas.check_collections(conn, tenant_id, dim)   # before creating a collection
    await quotas.check_vectors(conn, tenant_id, adding, adding_bytes)  # before writing vectors

The check_* calls take the writer's own connection, inside the transaction that will write, and
before it writes: they lock the tenant's quota (an advisory lock until that transaction ends), so
two concurrent writers cannot both squeeze under the limit. They raise QuotaExceeded (403
quota_exceeded) and the caller's transaction then rolls back: nothing is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from service.config import Settings
from service.db import Database
from service.db.connections import service_connection
from service.db.notify import QUOTA_CHANNEL, NotificationHub, notify
from service.errors import NotFound, QuotaExceeded, TooManyRequests
from service.metrics import TENANT_QUOTA_EXCEEDED, TENANT_RATE_LIMITED
from service.quota import store
from service.quota.limiter import Limiter, retry_after
from service.quota.models import HubQuotas, QuotaOverrides, TenantLimits, TenantQuotas

if TYPE_CHECKING:
    from service.auth.principal import Principal
    from service.hivehub.client import HiveHubClient

log = logging.getLogger("vectorhive.quota")

Operation = Literal["search", "search_mib", "upsert", "embedding", "import"]


class QuotaService:
    def __init__(
        self, db: Database, settings: Settings, limiter: Limiter, hub: HiveHubClient | None = None
    ) -> None:
        self.db = db
        self.settings = settings
        self.limiter = limiter
        self.hub = hub
        self.interval = settings.cluster.quota_check_interval
        rl = settings.rate_limiting
        self.costs: dict[str, float] = {
            "search": rl.cost_search,
            "search_mib": rl.cost_search_response_mib,
            "upsert": rl.cost_upsert_vector,
            "embedding": rl.cost_embedding,
            "import": rl.cost_import_vector,
        }
        # tenant -> (what is in force, monotonic time its inputs were read)
        self._limits: dict[str, tuple[TenantLimits, float]] = {}
        self._overrides: dict[str, QuotaOverrides] = {}
        self._hub: dict[str, tuple[HubQuotas, float]] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}

    # -- what is in force ----------------------------------------------------------------------------

    def _combine(self, overrides: QuotaOverrides | None, hub: HubQuotas | None) -> TenantLimits:
        q, rl = self.settings.quotas, self.settings.rate_limiting
        values: dict[str, Any] = {
            "max_collections": q.max_collections,
            "max_vectors": q.max_vectors,
            "max_storage_bytes": q.max_storage_bytes,
            "max_dimension": q.max_dimension,
            "requests_per_minute": rl.default_requests_per_minute,
            "requests_per_hour": rl.default_requests_per_hour,
            "token_bucket_capacity": rl.token_bucket_capacity,
            "token_refill_per_second": rl.token_refill_per_second,
        }
        source = "default"
        for layer, name in ((overrides, "tenant"), (hub, "hivehub")):
            if layer is None:
                continue
            for field in QuotaOverrides.__struct_fields__:
                value = getattr(layer, field)
                if value is not None:
                    values[field] = value
                    source = name if source in ("default", name) else f"{source}+{name}"
        return TenantLimits(**values, source=source)

    async def limits_for(self, tenant_id: str) -> TenantLimits:
        """Cached for cluster.quota_check_interval; refreshed in the background when older."""
        entry = self._limits.get(tenant_id)
        if entry is not None:
            if time.monotonic() - entry[1] > self.interval and tenant_id not in self._refreshing:
                task = asyncio.create_task(self._refresh(tenant_id), name=f"quota-refresh-{tenant_id}")
                self._refreshing[tenant_id] = task
                task.add_done_callback(lambda _: self._refreshing.pop(tenant_id, None))
            return entry[0]
        return await self._load(tenant_id)

    async def _load(self, tenant_id: str) -> TenantLimits:
        overrides = await store.get_overrides(service_connection(self.db.pool), tenant_id)
        if overrides is not None:
            self._overrides[tenant_id] = overrides
        hub = self._hub.get(tenant_id)
        limits = self._combine(overrides, hub[0] if hub else None)
        self._limits[tenant_id] = (limits, time.monotonic())
        return limits

    async def _refresh(self, tenant_id: str) -> None:
        hub = self._hub.get(tenant_id)
        if hub is not None and self.hub is not None and time.monotonic() - hub[1] > self.interval:
            from service.hivehub.client import HubUnavailable

            try:
                self._hub[tenant_id] = (await self.hub.tenant_quotas(tenant_id), time.monotonic())
            except HubUnavailable:
                log.warning(
                    "keeping the last known quotas of a HiveHub tenant", extra={"tenant_id": tenant_id}
                )
        try:
            await self._load(tenant_id)
        except Exception:
            log.warning("could not refresh a tenant's quotas", extra={"tenant_id": tenant_id}, exc_info=True)

    def attach(self, hub: NotificationHub) -> None:
        """Reload a tenant's limits when another process changes them (or after missed changes)."""
        hub.subscribe(QUOTA_CHANNEL, self._forget_limits)
        hub.on_reset(self._limits.clear)

    def _forget_limits(self, tenant_id: str) -> None:
        self._limits.pop(tenant_id, None)

    def set_hub_quotas(self, tenant_id: str, quotas: HubQuotas | None) -> None:
        """Quotas that came with a HiveHub key validation: in force from the next request."""
        if quotas is None:
            return  # the answer carried none: the tenant's last known hub quotas stay in force
        self._hub[tenant_id] = (quotas, time.monotonic())
        entry = self._limits.get(tenant_id)
        if entry is not None:
            self._limits[tenant_id] = (
                self._combine(self._overrides.get(tenant_id), self._hub[tenant_id][0]),
                entry[1],
            )

    async def close(self) -> None:
        for task in list(self._refreshing.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- operator API ---------------------------------------------------------------------------------

    async def get_quotas(self, tenant_id: str) -> TenantQuotas:
        overrides = await store.get_overrides(service_connection(self.db.pool), tenant_id)
        if overrides is None:
            raise NotFound(f"Tenant '{tenant_id}' does not exist.")
        hub = self._hub.get(tenant_id)
        return TenantQuotas(
            tenant_id=tenant_id,
            overrides=overrides,
            effective=self._combine(overrides, hub[0] if hub else None),
        )

    async def set_quotas(
        self, tenant_id: str, overrides: QuotaOverrides, *, actor: Principal | None = None
    ) -> TenantQuotas:
        from service.audit import store as audit

        async with self.db.transaction() as conn:
            if not await store.set_overrides(conn, tenant_id, overrides):
                raise NotFound(f"Tenant '{tenant_id}' does not exist.")
            # Every process on the database reloads the tenant's limits when this commits.
            await notify(conn, QUOTA_CHANNEL, tenant_id)
            await audit.write(
                conn,
                action="tenant.quotas",
                tenant_id=tenant_id,
                actor=actor,
                details=msgspec.to_builtins(overrides),
            )
        self._limits.pop(tenant_id, None)  # in force at once here; elsewhere through the notification
        await self._load(tenant_id)
        return await self.get_quotas(tenant_id)

    # -- rate limits ----------------------------------------------------------------------------------

    async def check_request(self, tenant_id: str) -> None:
        """Count one request against the tenant's per-minute and per-hour windows."""
        if not self.settings.rate_limits_enabled:
            return
        limits = await self.limits_for(tenant_id)
        verdict = await self.limiter.hit_windows(
            tenant_id, limits.requests_per_minute, limits.requests_per_hour
        )
        if verdict.allowed:
            return
        TENANT_RATE_LIMITED.labels(tenant_id).inc()
        per = "minute" if verdict.name == "requests_per_minute" else "hour"
        raise TooManyRequests(
            f"Rate limit exceeded: {verdict.limit} requests per {per} for tenant '{tenant_id}'. "
            f"Retry in {max(1, round(verdict.reset_in))} s.",
            limit_name=verdict.name,
            scope="tenant",
            value=verdict.limit,
            retry_after=verdict.reset_in,
            remaining=verdict.remaining,
        )

    async def charge(self, tenant_id: str, operation: Operation, units: int = 1) -> None:
        """Take the operation's cost (cost per unit x units) from the tenant's token bucket."""
        if not self.settings.rate_limits_enabled or units <= 0:
            return
        await self._take(tenant_id, operation, self.costs[operation] * units)

    async def charge_generation(self, tenant_id: str, prompt_tokens: int, max_tokens: int) -> None:
        """A generation, charged up front in one take (as OpenAI's own rate limits count it): its
        prompt tokens and the completion tokens it may produce (generation.cost_* per token)."""
        if not self.settings.rate_limits_enabled:
            return
        generation = self.settings.generation
        cost = prompt_tokens * generation.cost_prompt_token + max_tokens * generation.cost_generated_token
        await self._take(tenant_id, "generation", cost)

    async def _take(self, tenant_id: str, operation: str, cost: float) -> None:
        if cost <= 0:
            return
        limits = await self.limits_for(tenant_id)
        capacity, rate = limits.token_bucket_capacity, limits.token_refill_per_second
        verdict = await self.limiter.take(tenant_id, capacity=capacity, rate=rate, cost=cost)
        if verdict.allowed:
            return
        TENANT_RATE_LIMITED.labels(tenant_id).inc()
        operation_text = "search's response size" if operation == "search_mib" else operation
        if cost > capacity:
            detail = (
                f"This {operation_text} costs {cost:g} tokens, more than tenant '{tenant_id}''s bucket holds "
                f"({capacity:g}); send it in smaller parts."
            )
        else:
            detail = (
                f"Request budget exhausted: this {operation_text} costs {cost:g} tokens and tenant "
                f"'{tenant_id}' has {verdict.tokens:.2f} of {capacity:g} (refilled at {rate:g}/s)."
            )
        raise TooManyRequests(
            detail,
            limit_name="token_bucket",
            scope="tenant",
            value=capacity,
            retry_after=retry_after(min(cost, capacity), verdict.tokens, rate),
            remaining=verdict.tokens,
        )

    # -- storage quotas (inside the writer's transaction, before it writes) ---------------------------

    def _exceeded(
        self, tenant_id: str, quota: str, limit: int, current: int, requested: int
    ) -> QuotaExceeded:
        TENANT_QUOTA_EXCEEDED.labels(tenant_id, quota).inc()
        return QuotaExceeded(
            f"Quota exceeded: tenant '{tenant_id}' may have at most {limit} {quota.replace('_', ' ')}; "
            f"it has {current} and this request adds {requested}. Nothing was written.",
            quota=quota,
            limit=limit,
            current=current,
            requested=requested,
        )

    async def check_collections(self, conn: store.WriterConnection, tenant_id: str, dimension: int) -> None:
        limits = await self.limits_for(tenant_id)
        if limits.max_dimension is not None and dimension > limits.max_dimension:
            raise self._exceeded(tenant_id, "dimension", limits.max_dimension, dimension, dimension)
        if limits.max_collections is None:
            return
        await store.lock_tenant_quota(conn, tenant_id)
        count = await store.collection_count(conn, tenant_id)
        if count + 1 > limits.max_collections:
            raise self._exceeded(tenant_id, "collections", limits.max_collections, count, 1)

    async def check_vectors(
        self, conn: store.WriterConnection, tenant_id: str, adding: int, adding_bytes: int = 0
    ) -> None:
        """adding: vectors the write will add (new ids); adding_bytes: its estimated size on disk."""
        limits = await self.limits_for(tenant_id)
        if not limits.has_storage_limits:
            return
        await store.lock_tenant_quota(conn, tenant_id)
        vectors, size = await store.vectors_and_bytes(conn, tenant_id)
        if limits.max_vectors is not None and vectors + adding > limits.max_vectors:
            raise self._exceeded(tenant_id, "vectors", limits.max_vectors, vectors, adding)
        if (
            limits.max_storage_bytes is not None
            and adding_bytes > 0
            and size + adding_bytes > limits.max_storage_bytes
        ):
            raise self._exceeded(tenant_id, "storage_bytes", limits.max_storage_bytes, size, adding_bytes)
