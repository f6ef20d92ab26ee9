"""Import jobs, and a write counter on collections for the import cache.

An import is a row from the moment it is accepted until it ends, so that its state survives the
process that ran it: a server that dies mid-import leaves a row whose runner no longer holds its
instance lock, and the next sweep (at startup, then periodically, on any replica) ends it as
error/interrupted. Rows are visible to their own tenant only (row-level security, as collections).

collections.data_version grows with every committed write to a collection's vectors; an import
remembers the version its own merge produced, and a later import of an unchanged manifest into a
collection still at that version can finish at once (cached).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TENANT_ROLE = "vectorhive_tenant"


def upgrade() -> None:
    op.execute("ALTER TABLE collections ADD COLUMN data_version bigint NOT NULL DEFAULT 0")
    op.execute(
        """
        CREATE TABLE imports (
            id              uuid PRIMARY KEY,
            tenant_id       text NOT NULL DEFAULT current_setting('app.tenant_id')
                            REFERENCES tenants (id) ON DELETE CASCADE,
            collection      text NOT NULL,
            collection_id   bigint REFERENCES collections (id) ON DELETE SET NULL,
            source          text NOT NULL CHECK (source IN ('s5')),
            manifest_path   text NOT NULL,
            user_address    text NOT NULL,
            create_collection boolean NOT NULL,
            status          text NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'loading', 'loaded', 'error', 'cancelled')),
            runner          integer,
            chunks_done     integer NOT NULL DEFAULT 0,
            chunks_total    integer,
            vectors_loaded  bigint NOT NULL DEFAULT 0,
            manifest_fingerprint text,
            collection_version bigint,
            cached          boolean NOT NULL DEFAULT false,
            error_code      text,
            error_message   text,
            created_at      timestamptz NOT NULL DEFAULT now(),
            started_at      timestamptz,
            finished_at     timestamptz
        )
        """
    )
    op.execute("CREATE INDEX imports_tenant_created ON imports (tenant_id, created_at DESC, id DESC)")
    op.execute("CREATE INDEX imports_active ON imports (runner) WHERE status IN ('pending', 'loading')")
    op.execute(
        """CREATE INDEX imports_cache ON imports (collection_id, manifest_path, user_address)
           WHERE status = 'loaded'"""
    )
    op.execute("ALTER TABLE imports ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"""
        CREATE POLICY tenant_isolation ON imports TO {TENANT_ROLE}
            USING (tenant_id = current_setting('app.tenant_id', true))
            WITH CHECK (tenant_id = current_setting('app.tenant_id', true))
        """
    )
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON imports TO {TENANT_ROLE}")


def downgrade() -> None:
    op.execute("DROP TABLE imports")
    op.execute("ALTER TABLE collections DROP COLUMN data_version")
