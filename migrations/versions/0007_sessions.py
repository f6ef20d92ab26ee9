"""Read-only sessions and the Ed25519 keys that sign delegation and session tokens.

session_signing_keys: one row per key. The public key is plain (it is served as JWKS); the
private key is sealed (AES-256-GCM, under a key derived from sessions.signing_key_secret, the kid
as associated data). A key signs until it is retired (rotation) and verifies until verify_until
(retirement + the longest a token it signed can live), after which the sweep deletes it.

sessions: one row per session, from creation to well after its end (sessions.retention_days), so
expiry is durable: whichever replica sweeps next ends a session whose time is up, whether or not
the process that created it still runs. delegation_jti is unique: a delegation token is exchanged
at most once. A session backed by an S5 database owns a temporary collection, which the sweep
drops once the session has ended (deleted, expired, or its import failed), crash or not.

Neither table is visible to tenant roles: the service reads them as itself, always filtered by
tenant.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE session_signing_keys (
            kid            text PRIMARY KEY,
            public_key     bytea NOT NULL CHECK (length(public_key) = 32),
            private_sealed bytea NOT NULL,
            created_at     timestamptz NOT NULL DEFAULT now(),
            retired_at     timestamptz,
            verify_until   timestamptz
        )
        """
    )
    op.execute(
        """
        CREATE TABLE sessions (
            id             text PRIMARY KEY,
            tenant_id      text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            parent_key_id  text,
            collections    text[] NOT NULL,
            mode           text NOT NULL CHECK (mode = 'read_only'),
            max_queries    integer CHECK (max_queries > 0),
            queries_used   integer NOT NULL DEFAULT 0,
            delegation_jti text UNIQUE,
            kid            text NOT NULL,
            created_at     timestamptz NOT NULL DEFAULT now(),
            expires_at     timestamptz NOT NULL,
            ended_at       timestamptz,
            end_reason     text CHECK (end_reason IN ('deleted', 'expired', 'failed')),
            -- 'collections': existing collections; 's5': a temporary collection (named after the
            -- session) loaded by import_id, dropped (dropped_at) once the session has ended.
            source         text NOT NULL DEFAULT 'collections' CHECK (source IN ('collections', 's5')),
            import_id      uuid,
            dropped_at     timestamptz
        )
        """
    )
    op.execute("CREATE INDEX sessions_live ON sessions (expires_at) WHERE ended_at IS NULL")
    op.execute("CREATE INDEX sessions_tenant ON sessions (tenant_id, id)")
    op.execute("CREATE INDEX sessions_ended ON sessions (ended_at) WHERE ended_at IS NOT NULL")
    op.execute(
        "CREATE INDEX sessions_s5_pending ON sessions (created_at) WHERE source = 's5' AND dropped_at IS NULL"
    )


def downgrade() -> None:
    op.execute("DROP TABLE sessions")
    op.execute("DROP TABLE session_signing_keys")
