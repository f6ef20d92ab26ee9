"""SQL for the api_keys table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.auth.keys import KeyKind
from service.auth.models import ApiKey
from service.auth.principal import Permission
from service.db import ServiceConnection

_COLUMNS = (
    "id, kind, tenant_id, name, permission, collections, created_at, expires_at, revoked_at, "
    "last_used_at, rotated_from"
)


def _api_key(row: Any) -> ApiKey:
    return ApiKey(
        key_id=row["id"],
        kind=KeyKind(row["kind"]),
        tenant_id=row["tenant_id"],
        name=row["name"],
        permission=Permission(row["permission"]) if row["permission"] else None,
        collections=list(row["collections"]) if row["collections"] is not None else None,
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
        rotated_from=row["rotated_from"],
    )


@dataclass(frozen=True, slots=True)
class KeyForAuth:
    key: ApiKey
    secret_hash: str
    tenant_active: bool


async def for_auth(conn: ServiceConnection, key_id: str) -> KeyForAuth | None:
    row = await conn.fetchrow(
        f"""SELECT {", ".join("k." + c.strip() for c in _COLUMNS.split(","))}, k.secret_hash,
                   t.status AS tenant_status
            FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id
            WHERE k.id = $1""",
        key_id,
    )
    if row is None:
        return None
    return KeyForAuth(
        key=_api_key(row),
        secret_hash=row["secret_hash"],
        tenant_active=row["tenant_status"] in (None, "active"),
    )


async def insert(
    conn: ServiceConnection,
    *,
    key_id: str,
    kind: KeyKind,
    tenant_id: str | None,
    name: str,
    permission: Permission | None,
    collections: list[str] | None,
    secret_hash: str,
    expires_at: datetime | None,
    rotated_from: str | None = None,
) -> ApiKey:
    row = await conn.fetchrow(
        f"""INSERT INTO api_keys (id, kind, tenant_id, name, permission, collections, secret_hash,
                                  expires_at, rotated_from)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_COLUMNS}""",
        key_id,
        kind.value,
        tenant_id,
        name,
        permission.value if permission else None,
        collections,
        secret_hash,
        expires_at,
        rotated_from,
    )
    return _api_key(row)


async def get(
    conn: ServiceConnection, key_id: str, *, tenant_id: str | None, kind: KeyKind, for_update: bool = False
) -> ApiKey | None:
    """A key of one tenant (or, with tenant_id None and kind OPERATOR, an operator key)."""
    row = await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM api_keys
            WHERE id = $1 AND kind = $2 AND tenant_id IS NOT DISTINCT FROM $3
            {"FOR UPDATE" if for_update else ""}""",
        key_id,
        kind.value,
        tenant_id,
    )
    return _api_key(row) if row else None


async def list_page(
    conn: ServiceConnection,
    *,
    tenant_id: str | None,
    kind: KeyKind,
    after: str | None,
    limit: int,
    within: list[str] | None = None,
) -> list[ApiKey]:
    """within: only keys limited to some of these collections (what a scoped key may see)."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM api_keys
            WHERE kind = $1 AND tenant_id IS NOT DISTINCT FROM $2 AND ($3::text IS NULL OR id > $3)
              AND ($5::text[] IS NULL OR (collections IS NOT NULL AND collections <@ $5))
            ORDER BY id LIMIT $4""",
        kind.value,
        tenant_id,
        after,
        limit,
        within,
    )
    return [_api_key(r) for r in rows]


async def revoke(conn: ServiceConnection, key_id: str) -> ApiKey | None:
    """Revoke (idempotent: an already revoked key keeps its first revocation time)."""
    row = await conn.fetchrow(
        f"""UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
            WHERE id = $1 RETURNING {_COLUMNS}""",
        key_id,
    )
    return _api_key(row) if row else None


async def touch(conn: ServiceConnection, key_ids: list[str], used_at: list[datetime]) -> None:
    await conn.execute(
        """UPDATE api_keys k SET last_used_at = GREATEST(k.last_used_at, u.used_at)
           FROM unnest($1::text[], $2::timestamptz[]) AS u(id, used_at)
           WHERE k.id = u.id""",
        key_ids,
        used_at,
    )
