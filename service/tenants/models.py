from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

import msgspec
from litestar.params import QueryParameter

TENANT_ID_PATTERN = "^[a-z0-9][a-z0-9-]{0,62}$"
TENANT_ID_RULE = "1 to 63 characters: lowercase letters, digits and '-', starting with a letter or digit"
TenantId = Annotated[
    str,
    msgspec.Meta(
        pattern=TENANT_ID_PATTERN,
        examples=["acme-prod"],
        description=TENANT_ID_RULE,
        extra={"rule": TENANT_ID_RULE},
    ),
]
# A query parameter of the operators' listings: only this tenant.
TenantFilter = Annotated[
    str | None, QueryParameter(description="Only this tenant", pattern=TENANT_ID_PATTERN, max_length=63)
]


class TenantStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class Tenant(msgspec.Struct, kw_only=True):
    id: str
    display_name: str
    status: TenantStatus
    created_at: datetime
    updated_at: datetime
