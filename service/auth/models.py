from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

import msgspec

from service.auth.keys import KeyKind
from service.auth.principal import Permission

COLLECTION_NAME_PATTERN = "^[A-Za-z0-9_.-]{1,64}$"
COLLECTION_NAME_RULE = "1 to 64 characters: letters, digits, '_', '.' and '-' (but not '.' or '..')"
CollectionName = Annotated[
    str,
    msgspec.Meta(
        pattern=COLLECTION_NAME_PATTERN,
        description=COLLECTION_NAME_RULE,
        extra={"rule": COLLECTION_NAME_RULE},
    ),
]


def is_collection_name(name: str) -> bool:
    """The pattern, and not '.' or '..': those are path segments that URLs resolve away."""
    return re.fullmatch(COLLECTION_NAME_PATTERN, name) is not None and name not in (".", "..")


KeyName = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class ApiKey(msgspec.Struct, kw_only=True):
    """A key as lists show it: never its secret, never its hash."""

    key_id: str
    kind: KeyKind
    tenant_id: str | None
    name: str
    permission: Permission | None
    collections: list[str] | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    rotated_from: str | None


class CreatedApiKey(ApiKey, kw_only=True):
    """A key just made: the only time `key` is ever shown."""

    key: str


class CreateKeyRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    permission: Permission
    name: KeyName = "api key"
    collections: Annotated[list[CollectionName], msgspec.Meta(min_length=1, max_length=1000)] | None = None
    # With its zone: a naive time would be a guess (msgspec refuses it: 400 naming expires_at).
    expires_at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None


class KeyStatus(msgspec.Struct, kw_only=True):
    """What POST /api/v1/cluster/keys/validate tells an operator about a key: never its hash."""

    valid: bool
    status: str  # active | revoked | expired | unknown | malformed | tenant_suspended
    source: str | None = None  # local | hivehub
    kind: KeyKind | None = None
    key_id: str | None = None
    tenant_id: str | None = None
    permission: Permission | None = None
    collections: list[str] | None = None
    expires_at: datetime | None = None
