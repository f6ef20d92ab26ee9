"""The semantic cache of RAG answers: one table for every tenant, isolated by row-level security
(as `collections` is), with an HNSW index on the question's embedding.

Entries are keyed by the collection, its data_version at the time of the answer (a write to the
collection moves the version on, so older entries never match again and are pruned), and
cache_key: a digest of the chat model, the prompt template and the retrieval parameters. The
embedding column has no fixed dimension (collections use different models); the HNSW index is a
partial expression index for the default embedding model's 384 dimensions; others are scanned
within their (tenant, collection, key) rows, a handful each.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TENANT_ROLE = "vectorhive_tenant"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE rag_cache (
            id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id     text NOT NULL DEFAULT current_setting('app.tenant_id')
                          REFERENCES tenants (id) ON DELETE CASCADE,
            collection_id bigint NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
            data_version  bigint NOT NULL,
            cache_key     text NOT NULL,
            dimension     integer NOT NULL,
            embedding     vector NOT NULL,
            question      text NOT NULL,
            answer        jsonb NOT NULL,
            hits          bigint NOT NULL DEFAULT 0,
            created_at    timestamptz NOT NULL DEFAULT now(),
            expires_at    timestamptz NOT NULL
        )
        """
    )
    op.execute(
        "CREATE INDEX rag_cache_lookup ON rag_cache (tenant_id, collection_id, cache_key, data_version)"
    )
    op.execute("CREATE INDEX rag_cache_age ON rag_cache (tenant_id, created_at)")
    op.execute(
        "CREATE INDEX rag_cache_hnsw_384 ON rag_cache "
        "USING hnsw ((embedding::vector(384)) vector_cosine_ops) WHERE dimension = 384"
    )
    op.execute("ALTER TABLE rag_cache ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"""
        CREATE POLICY tenant_isolation ON rag_cache TO {TENANT_ROLE}
            USING (tenant_id = current_setting('app.tenant_id', true))
            WITH CHECK (tenant_id = current_setting('app.tenant_id', true))
        """
    )
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON rag_cache TO {TENANT_ROLE}")


def downgrade() -> None:
    op.execute("DROP TABLE rag_cache")
