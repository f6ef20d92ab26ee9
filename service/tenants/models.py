from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

import msgspec

TENANT_ID_PATTERN = "^[a-z0-9][a-z0-9-]{0,62}$"
TenantId = Annotated[str, msgspec.Meta(pattern=TENANT_ID_PATTERN, examples=["acme-prod"])]


class TenantStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class Tenant(msgspec.Struct, kw_only=True):
    id: str
    display_name: str
    status: TenantStatus
    created_at: datetime
    updated_at: datetime
