"""Tenant lifecycle, as operators drive it."""

from __future__ import annotations

import logging
import re

from service.audit import store as audit
from service.auth.cache import KeyCache
from service.auth.principal import Principal
from service.db import Database
from service.db.connections import service_connection
from service.db.notify import AUTH_CHANNEL, notify
from service.errors import Conflict, InvalidRequest, NotFound
from service.pagination import Page, decode_cursor, page_of
from service.tenants import store
from service.tenants.models import TENANT_ID_PATTERN, Tenant, TenantStatus

log = logging.getLogger("vectorhive.tenants")


class TenantService:
    def __init__(self, db: Database, cache: KeyCache | None = None) -> None:
        self.db = db
        self.cache = cache

    async def create(
        self, tenant_id: str, display_name: str | None = None, *, actor: Principal | None = None
    ) -> Tenant:
        if not re.fullmatch(TENANT_ID_PATTERN, tenant_id):
            raise InvalidRequest.field(
                "id",
                f"must match {TENANT_ID_PATTERN}",
                f"Tenant id '{tenant_id}' is not valid: use 1-63 lower-case letters, digits and '-', "
                "starting with a letter or digit.",
            )
        async with self.db.transaction() as conn:
            tenant = await store.insert(conn, tenant_id, display_name or tenant_id)
            if tenant is None:
                raise Conflict(f"Tenant '{tenant_id}' already exists.")
            await self.db.ensure_tenant_role(conn, tenant_id)
            await audit.write(conn, action="tenant.create", tenant_id=tenant_id, actor=actor)
        log.info("tenant created", extra={"tenant_id": tenant_id})
        return tenant

    async def get(self, tenant_id: str) -> Tenant:
        tenant = await store.get(service_connection(self.db.pool), tenant_id)
        if tenant is None:
            raise NotFound(f"Tenant '{tenant_id}' does not exist.")
        return tenant

    async def list_page(
        self, *, cursor: str | None, limit: int, status: TenantStatus | None = None
    ) -> Page[Tenant]:
        tenants = await store.list_page(
            service_connection(self.db.pool), after=decode_cursor(cursor), limit=limit + 1, status=status
        )
        return page_of(tenants, limit, lambda t: t.id)

    async def set_status(
        self, tenant_id: str, status: TenantStatus, *, actor: Principal | None = None
    ) -> Tenant:
        async with self.db.transaction() as conn:
            tenant = await store.set_status(conn, tenant_id, status)
            if tenant is None:
                raise NotFound(f"Tenant '{tenant_id}' does not exist.")
            # Every process on the database drops the tenant's cached keys when this commits.
            await notify(conn, AUTH_CHANNEL, f"tenant:{tenant_id}")
            action = "tenant.suspend" if status is TenantStatus.SUSPENDED else "tenant.resume"
            await audit.write(conn, action=action, tenant_id=tenant_id, actor=actor)
        if self.cache is not None:
            # Cached principals carry the tenant's status; take effect at once in this process.
            self.cache.evict_tenant(tenant_id)
        log.info("tenant status changed", extra={"tenant_id": tenant_id, "status": status.value})
        return tenant
