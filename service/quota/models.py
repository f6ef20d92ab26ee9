"""Quota values: what an operator or HiveHub may set per tenant, and what is in force."""

from __future__ import annotations

from typing import Annotated

import msgspec

Limit = Annotated[int, msgspec.Meta(ge=0)]
Rate = Annotated[int, msgspec.Meta(ge=1)]
Tokens = Annotated[float, msgspec.Meta(gt=0)]


class QuotaOverrides(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A tenant's own values; an absent (null) field falls back to the configured default.

    The same object is HiveHub's `quotas` (docs/hivehub.md), except that HiveHub may send fields
    this version does not know (they are ignored there)."""

    max_collections: Limit | None = None
    max_vectors: Limit | None = None
    max_storage_bytes: Limit | None = None
    max_dimension: Limit | None = None
    requests_per_minute: Rate | None = None
    requests_per_hour: Rate | None = None
    token_bucket_capacity: Tokens | None = None
    token_refill_per_second: Tokens | None = None


class HubQuotas(QuotaOverrides, kw_only=True, forbid_unknown_fields=False):
    """HiveHub's quota object: unknown fields are tolerated (the hub may be newer than we are)."""


class TenantLimits(msgspec.Struct, kw_only=True, frozen=True):
    """What is in force for a tenant. null storage limits are unlimited."""

    max_collections: int | None
    max_vectors: int | None
    max_storage_bytes: int | None
    max_dimension: int | None
    requests_per_minute: int
    requests_per_hour: int
    token_bucket_capacity: float
    token_refill_per_second: float
    source: str  # "default", "tenant" (operator overrides), "hivehub" (and perhaps overrides)

    @property
    def has_storage_limits(self) -> bool:
        return self.max_vectors is not None or self.max_storage_bytes is not None


class TenantQuotas(msgspec.Struct, kw_only=True):
    """GET/PUT /api/v1/admin/tenants/{id}/quotas: the overrides and what is in force."""

    tenant_id: str
    overrides: QuotaOverrides
    effective: TenantLimits
