"""Who is calling: the result of authentication, passed explicitly to every service."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from service.auth.keys import KeyKind


class Permission(StrEnum):
    ADMIN = "admin"
    READ_WRITE = "read_write"
    READ_ONLY = "read_only"
    MCP = "mcp"


# What each REST permission includes. MCP keys are for the MCP endpoint only and include nothing here.
_REST_RANK = {Permission.READ_ONLY: 1, Permission.READ_WRITE: 2, Permission.ADMIN: 3}


@dataclass(frozen=True, slots=True)
class Principal:
    kind: KeyKind
    key_id: str | None  # None only for the keyless default tenant of single-tenant mode
    tenant_id: str | None  # None for operators
    permission: Permission | None  # None for operators
    collections: frozenset[str] | None = None  # None: every collection of the tenant
    tenant_active: bool = True
    expires_at: datetime | None = None
    source: str = "local"  # "hivehub" for keys HiveHub validated, "session" for session tokens
    # Set for a session token: read-only, limited to the session's collections, accepted only on
    # the read endpoints of those collections (service.auth.guards.SESSION_OPERATIONS).
    session_id: str | None = None

    @property
    def is_operator(self) -> bool:
        return self.kind is KeyKind.OPERATOR

    def as_tenant(self) -> TenantPrincipal | None:
        """This caller as a tenant principal; None for operators (and keys without a permission)."""
        if isinstance(self, TenantPrincipal):
            return self
        if self.tenant_id is None or self.permission is None:
            return None
        return TenantPrincipal(
            kind=self.kind,
            key_id=self.key_id,
            tenant_id=self.tenant_id,
            permission=self.permission,
            collections=self.collections,
            tenant_active=self.tenant_active,
            expires_at=self.expires_at,
            source=self.source,
            session_id=self.session_id,
        )

    def allows(self, required: Permission) -> bool:
        """Whether this principal's REST permission includes `required` (READ_ONLY < READ_WRITE < ADMIN)."""
        if self.permission is None or self.permission is Permission.MCP:
            return False
        return _REST_RANK[self.permission] >= _REST_RANK[required]

    def may_see_collection(self, name: str) -> bool:
        return self.collections is None or name in self.collections


@dataclass(frozen=True, slots=True)
class TenantPrincipal(Principal):
    """A caller that acts for one tenant: what the permission guards of tenant routes admit
    (service.auth.guards) and what tenant services take, so none of them checks for a tenant."""

    tenant_id: str
    permission: Permission
