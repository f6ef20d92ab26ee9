"""Collections, the tenant group role and row-level security.

Tenant work runs as a NOLOGIN role of its own (one per tenant, created by the service and named
by service.db.database.tenant_role_name), a member of the group role vectorhive_tenant created
here. Each collection's vectors live in a table of their own (vectors_<collection id>), created
by the service and granted to its tenant's role only. The shared `collections` table has a
row-level security policy for the group: a tenant sees the rows whose tenant_id equals the
transaction's app.tenant_id. Both hold even when the service logs in as a superuser, because
the policies and privileges apply to the role the transaction switches to.

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
    # The tenant roles of this database (roles belong to the cluster; other databases keep theirs).
    op.execute(
        """
        DO $$
        DECLARE t record;
        BEGIN
            FOR t IN SELECT 'vh_t_' || left(encode(sha256(
                            convert_to(current_database() || ':' || id, 'UTF8')), 'hex'), 24) AS role
                     FROM tenants LOOP
                IF EXISTS (SELECT FROM pg_roles WHERE rolname = t.role) THEN
                    EXECUTE format('DROP ROLE %I', t.role);
                END IF;
            END LOOP;
        END $$
        """
    )
