"""Keys this server does not know, validated by HiveHub (cluster mode): the Authenticator's hub path.

A tenant first seen through HiveHub is created here with its role; its quotas come with the
answer. A HiveHub tenant id that names a local tenant is refused (never one tenant's data to another).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from service.audit import store as audit
from service.audit.service import AuditBuffer
from service.auth.cache import KeyCache
from service.auth.failures import INVALID_KEY, refused
from service.auth.keys import KeyKind, fingerprint
from service.auth.models import KeyStatus
from service.auth.principal import Permission, Principal
from service.db import Database
from service.errors import Forbidden, ServiceUnavailable
from service.hivehub.client import HiveHubClient, HubUnavailable
from service.quota.models import HubQuotas
from service.quota.service import QuotaService
from service.tenants import store as tenant_store
from service.tenants.models import TENANT_ID_PATTERN

log = logging.getLogger("vectorhive.auth")


@dataclass(frozen=True, slots=True)
class HubKey:
    """HiveHub's answer about a key it says is valid, once checked: it has a tenant and a permission."""

    tenant_id: str
    tenant_name: str | None
    permission: Permission
    collections: list[str] | None
    expires_at: datetime | None
    quotas: HubQuotas | None


class HubKeys:
    def __init__(
        self,
        db: Database,
        client: HiveHubClient,
        cache: KeyCache,
        audit_buffer: AuditBuffer,
        quotas: QuotaService | None = None,
    ) -> None:
        self.db = db
        self.client = client
        self.cache = cache
        self.audit = audit_buffer
        self.quotas = quotas

    async def ask(self, token: str) -> HubKey | None:
        """HiveHub's answer about a key: None when it says the key is not valid."""
        try:
            answer = await self.client.validate_key(token)
        except HubUnavailable as exc:
            raise ServiceUnavailable(
                "The API key is not known here and HiveHub, which validates it, is unreachable; "
                "retry shortly.",
                code="hivehub_unavailable",
                headers={"Retry-After": "5"},
            ) from exc
        if not answer.valid:
            return None
        # The HiveHub seed spells the levels ADMIN, READ_WRITE, READ_ONLY, MCP: any case will do.
        permission = answer.permission.lower() if answer.permission is not None else None
        if (
            answer.tenant_id is None
            or not re.fullmatch(TENANT_ID_PATTERN, answer.tenant_id)
            or permission not in {p.value for p in Permission}
        ):
            log.error("HiveHub validated a key with an unusable tenant id or permission")
            raise ServiceUnavailable(
                "HiveHub's answer about this key could not be used; retry later or contact the operator.",
                code="hivehub_unavailable",
                headers={"Retry-After": "30"},
            )
        return HubKey(
            tenant_id=answer.tenant_id,
            tenant_name=answer.tenant_name,
            permission=Permission(permission),
            collections=answer.collections,
            expires_at=answer.expires_at,
            quotas=answer.quotas,
        )

    async def verify(self, token: str, fp: bytes) -> Principal:
        read_at = self.cache.now()
        answer = await self.ask(token)
        hub_key_id = hub_key_id_of(fp)
        if answer is None:
            self.cache.put_known_bad(fp)
            raise refused(self.audit, "invalid", INVALID_KEY, key_id=hub_key_id)
        if answer.expires_at is not None and answer.expires_at <= datetime.now(UTC):
            self.cache.put_known_bad(fp)
            raise refused(
                self.audit,
                "expired",
                "The API key has expired.",
                key_id=hub_key_id,
                tenant_id=answer.tenant_id,
            )
        active = await self._ensure_tenant(answer.tenant_id, answer.tenant_name)
        if self.quotas is not None:
            self.quotas.set_hub_quotas(answer.tenant_id, answer.quotas)
        principal = Principal(
            kind=KeyKind.TENANT,
            key_id=hub_key_id,
            tenant_id=answer.tenant_id,
            permission=answer.permission,
            collections=frozenset(answer.collections) if answer.collections is not None else None,
            tenant_active=active,
            expires_at=answer.expires_at,
            source="hivehub",
        )
        self.cache.put(fp, principal, read_at=read_at)
        return principal

    async def _ensure_tenant(self, tenant_id: str, name: str | None) -> bool:
        """A tenant first seen through HiveHub is created here (with its role); returns whether active."""
        async with self.db.transaction() as conn:
            created = await tenant_store.insert(conn, tenant_id, name or tenant_id, source="hivehub")
            if created is not None:
                await self.db.ensure_tenant_role(conn, tenant_id)
                log.info("tenant created from HiveHub", extra={"tenant_id": tenant_id})
                await audit.write(
                    conn,
                    action="tenant.create",
                    tenant_id=tenant_id,
                    actor=None,
                    details={"source": "hivehub"},
                )
                return True
            existing = await tenant_store.status_and_source(conn, tenant_id)
        if existing is not None and existing[1] != "hivehub":
            # A local tenant (keys made with `vectorhive keys create`) with the id HiveHub gave its
            # customer: never hand one tenant's data to the other.
            log.error(
                "HiveHub validated a key for a tenant id that belongs to a local tenant; refused",
                extra={"tenant_id": tenant_id},
            )
            raise Forbidden(
                "This key's tenant, as HiveHub names it, is a different tenant on this server; the "
                "operator must resolve the conflict.",
                code="hivehub_tenant_conflict",
            )
        return existing is not None and existing[0] == "active"

    async def inspect(self, token: str) -> KeyStatus:
        """A key's status as HiveHub tells it, for an operator (not cached, not counted as a use)."""
        answer = await self.ask(token)
        if answer is None:
            return KeyStatus(valid=False, status="unknown", source="hivehub")
        expired = answer.expires_at is not None and answer.expires_at <= datetime.now(UTC)
        return KeyStatus(
            valid=not expired,
            status="expired" if expired else "active",
            source="hivehub",
            kind=KeyKind.TENANT,
            key_id=hub_key_id_of(fingerprint(token)),
            tenant_id=answer.tenant_id,
            permission=answer.permission,
            collections=answer.collections,
            expires_at=answer.expires_at,
        )


def hub_key_id_of(fp: bytes) -> str:
    """What names a HiveHub key in logs and audit (not secret: a prefix of its fingerprint)."""
    return "hub_" + fp.hex()[:12]
