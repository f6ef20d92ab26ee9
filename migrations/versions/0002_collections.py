"""Collections, the tenant role and row-level security.

Each collection's vectors live in a table of their own (vectors_<collection id>), created by the
service, not by a migration. Every tenant-data table carries tenant_id and a row-level security
policy comparing it with the transaction's app.tenant_id; tenant work runs as the NOLOGIN role
vectorhive_tenant (SET LOCAL ROLE), to which the policies apply even when the service logs in as
a superuser. A policy on a column (rather than a constant) keeps the planner's row estimates
right, so HNSW index scans are still chosen under RLS.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TENANT_ROLE = "vectorhive_tenant"


def upgrade() -> None:
    # Roles belong to the whole PostgreSQL cluster: create it only if another database has not.
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{TENANT_ROLE}') THEN
                CREATE ROLE {TENANT_ROLE} NOLOGIN;
            END IF;
        END $$
        """
    )
    # The service's own login must be able to SET ROLE to it (superusers always can).
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                EXECUTE 'GRANT {TENANT_ROLE} TO ' || quote_ident(current_user);
            END IF;
        END $$
        """
    )
    op.execute(
        """
        CREATE TABLE collections (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id       text NOT NULL DEFAULT current_setting('app.tenant_id')
                            REFERENCES tenants (id) ON DELETE CASCADE,
            name            text NOT NULL CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
            dimension       integer NOT NULL CHECK (dimension BETWEEN 1 AND 4000),
            metric          text NOT NULL CHECK (metric IN ('cosine', 'l2', 'inner_product')),
            storage         text NOT NULL CHECK (storage IN ('float32', 'float16')),
            hnsw_m          integer NOT NULL CHECK (hnsw_m BETWEEN 2 AND 100),
            hnsw_ef_construction integer NOT NULL CHECK (hnsw_ef_construction BETWEEN 4 AND 1000),
            description     text,
            vector_count    bigint NOT NULL DEFAULT 0,
            index_status    text NOT NULL DEFAULT 'none'
                            CHECK (index_status IN ('none', 'building', 'ready', 'failed')),
            index_error     text,
            index_started_at  timestamptz,
            index_finished_at timestamptz,
            created_at      timestamptz NOT NULL DEFAULT now(),
            UNIQUE (tenant_id, name)
        )
        """
    )
    op.execute("ALTER TABLE collections ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"""
        CREATE POLICY tenant_isolation ON collections TO {TENANT_ROLE}
            USING (tenant_id = current_setting('app.tenant_id', true))
            WITH CHECK (tenant_id = current_setting('app.tenant_id', true))
        """
    )
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON collections TO {TENANT_ROLE}")
    # The tenant role reads tenants only to resolve foreign keys; it sees no other table.
    op.execute(f"GRANT SELECT (id) ON tenants TO {TENANT_ROLE}")


def downgrade() -> None:
    op.execute(
        """
        DO $$
        DECLARE t record;
        BEGIN
            FOR t IN SELECT id FROM collections LOOP
                EXECUTE format('DROP TABLE IF EXISTS %I', 'vectors_' || t.id);
            END LOOP;
        END $$
        """
    )
    op.execute("DROP TABLE collections")
    op.execute(f"REVOKE ALL ON tenants FROM {TENANT_ROLE}")
