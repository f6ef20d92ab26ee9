"""What the audit routes answer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from service.pagination import Page


class AuditEvent(msgspec.Struct, kw_only=True):
    id: int
    at: datetime
    tenant_id: str | None
    actor_kind: str
    actor_key_id: str | None
    action: str
    target: str | None
    outcome: str
    details: dict[str, Any]
    request_id: str | None


class AuditPage(Page[AuditEvent], kw_only=True):
    # Restated: Litestar documents the items of a subclass of a parameterised generic struct as
    # [object]; with the type named here, the schema is that of a plain Page of events.
    items: list[AuditEvent]
