"""SQL for sessions and session_signing_keys: service bookkeeping (no row-level security), read
and written on a service connection and filtered by tenant here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.db import ServiceConnection

# Keys HiveHub validated are named "hub_<hash>" (service.auth.service) and have no row here.
HUB_KEY_PREFIX = "hub_"

_SESSION_COLUMNS = (
    "id, tenant_id, parent_key_id, collections, mode, max_queries, queries_used, delegation_jti, kid, "
    "created_at, expires_at, ended_at, end_reason, source, import_id, dropped_at"
)


@dataclass(frozen=True, slots=True)
class SessionRow:
    id: str
    tenant_id: str
    parent_key_id: str | None
    collections: list[str]
    mode: str
    max_queries: int | None
    queries_used: int
    delegation_jti: str | None
    kid: str
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    source: str = "collections"
    import_id: Any = None  # uuid.UUID for S5-backed sessions
    dropped_at: datetime | None = None


def _session(row: Any) -> SessionRow:
    return SessionRow(**{**dict(row), "collections": list(row["collections"])})


@dataclass(frozen=True, slots=True)
class SigningKeyRow:
    kid: str
    public_key: bytes
    private_sealed: bytes
    created_at: datetime
    retired_at: datetime | None
    verify_until: datetime | None


# -- signing keys -----------------------------------------------------------------------------------


async def usable_keys(conn: ServiceConnection) -> list[SigningKeyRow]:
    """Keys that still verify (newest first)."""
    rows = await conn.fetch(
        """SELECT kid, public_key, private_sealed, created_at, retired_at, verify_until
           FROM session_signing_keys WHERE verify_until IS NULL OR verify_until > now()
           ORDER BY created_at DESC, kid"""
    )
    return [SigningKeyRow(**dict(r)) for r in rows]


async def insert_key(conn: ServiceConnection, kid: str, public_key: bytes, private_sealed: bytes) -> None:
    await conn.execute(
        "INSERT INTO session_signing_keys (kid, public_key, private_sealed) VALUES ($1, $2, $3)",
        kid,
        public_key,
        private_sealed,
    )


async def retire_keys(conn: ServiceConnection, *, except_kid: str, verify_for_seconds: float) -> list[str]:
    """Stop signing with every other current key; they verify for verify_for_seconds more."""
    rows = await conn.fetch(
        """UPDATE session_signing_keys
           SET retired_at = now(), verify_until = now() + make_interval(secs => $2)
           WHERE retired_at IS NULL AND kid <> $1 RETURNING kid""",
        except_kid,
        verify_for_seconds,
    )
    return [r["kid"] for r in rows]


async def delete_unusable_keys(conn: ServiceConnection) -> int:
    result: str = await conn.execute(
        "DELETE FROM session_signing_keys WHERE verify_until IS NOT NULL AND verify_until <= now()"
    )
    return int(result.split()[-1])


# -- sessions ---------------------------------------------------------------------------------------


async def lock_tenant(conn: ServiceConnection, tenant_id: str) -> None:
    """Serialises session creation per tenant, so the count below cannot be raced past."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('vectorhive:sessions:' || $1, 0))", tenant_id
    )


async def live_count(conn: ServiceConnection, tenant_id: str) -> tuple[int, datetime | None]:
    """Live sessions of the tenant, and when the first of them expires."""
    row = await conn.fetchrow(
        """SELECT count(*) AS n, min(expires_at) AS first_end FROM sessions
           WHERE tenant_id = $1 AND ended_at IS NULL AND expires_at > now()""",
        tenant_id,
    )
    return int(row["n"]), row["first_end"]


async def insert(
    conn: ServiceConnection,
    *,
    session_id: str,
    tenant_id: str,
    parent_key_id: str | None,
    collections: list[str],
    max_queries: int | None,
    delegation_jti: str | None,
    kid: str,
    ttl_seconds: int,
    import_id: Any = None,
) -> SessionRow | None:
    """None when the delegation token was already exchanged. import_id: an S5-backed session."""
    row = await conn.fetchrow(
        f"""INSERT INTO sessions (id, tenant_id, parent_key_id, collections, mode, max_queries,
                                  delegation_jti, kid, expires_at, source, import_id)
            VALUES ($1, $2, $3, $4, 'read_only', $5, $6, $7, now() + make_interval(secs => $8),
                    CASE WHEN $9::uuid IS NULL THEN 'collections' ELSE 's5' END, $9)
            ON CONFLICT (delegation_jti) DO NOTHING
            RETURNING {_SESSION_COLUMNS}""",
        session_id,
        tenant_id,
        parent_key_id,
        collections,
        max_queries,
        delegation_jti,
        kid,
        float(ttl_seconds),
        import_id,
    )
    return _session(row) if row is not None else None


async def get(conn: ServiceConnection, tenant_id: str, session_id: str) -> SessionRow | None:
    row = await conn.fetchrow(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE tenant_id = $1 AND id = $2", tenant_id, session_id
    )
    return _session(row) if row is not None else None


@dataclass(frozen=True, slots=True)
class SessionForAuth:
    session: SessionRow
    tenant_active: bool
    parent_state: str  # active | revoked | expired | missing | hivehub | none (keyless default principal)


async def for_auth(conn: ServiceConnection, session_id: str) -> SessionForAuth | None:
    row = await conn.fetchrow(
        f"""SELECT {", ".join("s." + c.strip() for c in _SESSION_COLUMNS.split(","))},
                   t.status AS tenant_status, k.id AS key_id, k.revoked_at AS key_revoked_at,
                   k.expires_at AS key_expires_at
            FROM sessions s JOIN tenants t ON t.id = s.tenant_id
            LEFT JOIN api_keys k ON k.id = s.parent_key_id
            WHERE s.id = $1""",
        session_id,
    )
    if row is None:
        return None
    data = dict(row)
    tenant_status = data.pop("tenant_status")
    key_id, revoked, key_expires = data.pop("key_id"), data.pop("key_revoked_at"), data.pop("key_expires_at")
    if row["parent_key_id"] is None:
        parent = "none"
    elif key_id is None and row["parent_key_id"].startswith(HUB_KEY_PREFIX):
        parent = "hivehub"  # validated by HiveHub, not stored here: nothing to check locally
    elif key_id is None:
        parent = "missing"
    elif revoked is not None:
        parent = "revoked"
    elif key_expires is not None and key_expires <= datetime.now(key_expires.tzinfo):
        parent = "expired"
    else:
        parent = "active"
    return SessionForAuth(
        session=_session(data), tenant_active=tenant_status == "active", parent_state=parent
    )


async def list_page(
    conn: ServiceConnection, tenant_id: str, *, after: str | None, limit: int, live_only: bool
) -> list[SessionRow]:
    rows = await conn.fetch(
        f"""SELECT {_SESSION_COLUMNS} FROM sessions
            WHERE tenant_id = $1 AND ($2::text IS NULL OR id > $2)
              AND (NOT $4 OR (ended_at IS NULL AND expires_at > now()))
            ORDER BY id LIMIT $3""",
        tenant_id,
        after,
        limit,
        live_only,
    )
    return [_session(r) for r in rows]


async def end(conn: ServiceConnection, tenant_id: str, session_id: str, reason: str) -> SessionRow | None:
    """End a live session; None if it does not exist or has already ended."""
    row = await conn.fetchrow(
        f"""UPDATE sessions SET ended_at = now(), end_reason = $3
            WHERE tenant_id = $1 AND id = $2 AND ended_at IS NULL RETURNING {_SESSION_COLUMNS}""",
        tenant_id,
        session_id,
        reason,
    )
    return _session(row) if row is not None else None


async def expire_due(conn: ServiceConnection, limit: int) -> list[SessionRow]:
    """End sessions whose time is up; rows another replica is ending right now are skipped."""
    rows = await conn.fetch(
        f"""UPDATE sessions SET ended_at = now(), end_reason = 'expired'
            WHERE id IN (SELECT id FROM sessions WHERE ended_at IS NULL AND expires_at <= now()
                         ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
            RETURNING {_SESSION_COLUMNS}""",
        limit,
    )
    return [_session(r) for r in rows]


async def count_query(conn: ServiceConnection, session_id: str) -> tuple[int, int | None] | None:
    """Count one query of a session with max_queries; None if its allowance is used up (or it ended)."""
    row = await conn.fetchrow(
        """UPDATE sessions SET queries_used = queries_used + 1
           WHERE id = $1 AND ended_at IS NULL AND (max_queries IS NULL OR queries_used < max_queries)
           RETURNING queries_used, max_queries""",
        session_id,
    )
    return (row["queries_used"], row["max_queries"]) if row is not None else None


async def add_queries(conn: ServiceConnection, counts: dict[str, int]) -> None:
    """Uses of sessions without max_queries, counted in memory between sweeps."""
    await conn.execute(
        """UPDATE sessions s SET queries_used = s.queries_used + u.n
           FROM unnest($1::text[], $2::int[]) AS u(id, n) WHERE s.id = u.id""",
        list(counts),
        list(counts.values()),
    )


async def prune_ended(conn: ServiceConnection, retention_days: int) -> int:
    result: str = await conn.execute(
        "DELETE FROM sessions WHERE ended_at IS NOT NULL AND ended_at < now() - make_interval(days => $1)",
        retention_days,
    )
    return int(result.split()[-1])


async def s5_to_check(conn: ServiceConnection, limit: int) -> list[SessionRow]:
    """S5-backed sessions whose temporary collection is still there: ended ones first (drop it),
    then live ones (has the import failed?)."""
    rows = await conn.fetch(
        f"""SELECT {_SESSION_COLUMNS} FROM sessions WHERE source = 's5' AND dropped_at IS NULL
            ORDER BY (ended_at IS NULL), created_at LIMIT $1""",
        limit,
    )
    return [_session(r) for r in rows]


async def mark_dropped(conn: ServiceConnection, session_id: str) -> None:
    await conn.execute(
        "UPDATE sessions SET dropped_at = now() WHERE id = $1 AND ended_at IS NOT NULL", session_id
    )


async def live_sharing(conn: ServiceConnection, tenant_id: str, collection: str, except_id: str) -> int:
    """Other sessions not yet ended that read the S5-loaded collection."""
    found: int = await conn.fetchval(
        """SELECT count(*) FROM sessions WHERE tenant_id = $1 AND source = 's5' AND ended_at IS NULL
              AND collections = ARRAY[$2]::text[] AND id <> $3""",
        tenant_id,
        collection,
        except_id,
    )
    return found
