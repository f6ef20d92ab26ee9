"""Foundation: the vector extension, tenants and API keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute(
        """
        CREATE TABLE tenants (
            id           text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
            display_name text NOT NULL,
            status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
            created_at   timestamptz NOT NULL DEFAULT now(),
            updated_at   timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # One table for both kinds of key: tenant keys carry a tenant and a permission, operator keys
    # carry neither. Only the argon2id hash of the secret is stored.
    op.execute(
        """
        CREATE TABLE api_keys (
            id           text PRIMARY KEY,
            kind         text NOT NULL CHECK (kind IN ('tenant', 'operator')),
            tenant_id    text REFERENCES tenants (id) ON DELETE CASCADE,
            name         text NOT NULL,
            permission   text CHECK (permission IN ('admin', 'read_write', 'read_only', 'mcp')),
            collections  text[],
            secret_hash  text NOT NULL,
            created_at   timestamptz NOT NULL DEFAULT now(),
            expires_at   timestamptz,
            revoked_at   timestamptz,
            last_used_at timestamptz,
            rotated_from text REFERENCES api_keys (id) ON DELETE SET NULL,
            CONSTRAINT api_keys_kind_shape CHECK (
                (kind = 'tenant' AND tenant_id IS NOT NULL AND permission IS NOT NULL)
                OR (kind = 'operator' AND tenant_id IS NULL AND permission IS NULL AND collections IS NULL)
            )
        )
        """
    )
    op.execute("CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, id) WHERE tenant_id IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP TABLE api_keys")
    op.execute("DROP TABLE tenants")
