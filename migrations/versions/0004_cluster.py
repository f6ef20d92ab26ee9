"""Cluster mode: per-tenant quota overrides, the usage outbox and the audit log.

tenants.quotas holds an operator's overrides of the configured defaults (absent keys: default);
tenants.source says whether the tenant was created here or first seen through HiveHub.

usage_outbox holds metered usage: rows are written by each replica's meter (aggregated in memory,
flushed every usage.flush_interval seconds and at shutdown), reported to HiveHub in batches, and
marked sent only after HiveHub's 2xx. The row id is the report's idempotency key. Rows stay after
they are sent: they are also what GET /api/v1/usage sums.

audit_log: key creation, rotation and revocation, operator actions and authentication failures.

Neither table is visible to tenant roles: the service reads them as itself, always filtered by tenant.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE tenants ADD COLUMN quotas jsonb NOT NULL DEFAULT '{}'::jsonb")
    op.execute(
        "ALTER TABLE tenants ADD COLUMN source text NOT NULL DEFAULT 'local' "
        "CHECK (source IN ('local', 'hivehub'))"
    )
    op.execute(
        """
        CREATE TABLE usage_outbox (
            id           uuid PRIMARY KEY,
            tenant_id    text NOT NULL,
            metric       text NOT NULL,
            operation    text NOT NULL DEFAULT '',
            quantity     bigint NOT NULL CHECK (quantity >= 0),
            period_start timestamptz NOT NULL,
            period_end   timestamptz NOT NULL,
            created_at   timestamptz NOT NULL DEFAULT now(),
            attempts     integer NOT NULL DEFAULT 0,
            sent_at      timestamptz,
            -- HiveHub refused this row itself (4xx when sent alone): kept for the operator, not resent.
            rejected_at  timestamptz,
            rejected_reason text
        )
        """
    )
    op.execute(
        """CREATE INDEX usage_outbox_unsent ON usage_outbox (created_at)
           WHERE sent_at IS NULL AND rejected_at IS NULL"""
    )
    op.execute("CREATE INDEX usage_outbox_created ON usage_outbox (created_at)")  # retention
    op.execute("CREATE INDEX usage_outbox_tenant ON usage_outbox (tenant_id, period_start)")
    op.execute(
        """
        CREATE TABLE audit_log (
            id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at           timestamptz NOT NULL DEFAULT now(),
            tenant_id    text,
            actor_kind   text NOT NULL CHECK (actor_kind IN ('operator', 'tenant', 'cli', 'anonymous')),
            actor_key_id text,
            action       text NOT NULL,
            target       text,
            outcome      text NOT NULL CHECK (outcome IN ('ok', 'denied')),
            details      jsonb NOT NULL DEFAULT '{}'::jsonb,
            request_id   text
        )
        """
    )
    op.execute("CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id DESC)")
    op.execute("CREATE INDEX audit_log_at ON audit_log (at)")


def downgrade() -> None:
    op.execute("DROP TABLE audit_log")
    op.execute("DROP TABLE usage_outbox")
    op.execute("ALTER TABLE tenants DROP COLUMN source")
    op.execute("ALTER TABLE tenants DROP COLUMN quotas")
