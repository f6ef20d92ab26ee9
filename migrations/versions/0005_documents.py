"""Text collections: a collection bound to an embedding model stores documents as chunks.

collections.embedding_model names the model (embeddings.models in config) that embeds the
collection's documents and text queries; null for a collection of plain vectors.
chunk_tokens and chunk_overlap size its chunks in that model's tokens, text_search_config is
the PostgreSQL text search configuration of its keyword index.

The per-collection tables (documents_<id>, and the text columns of vectors_<id>) are created by
the service with the collection, like vectors_<id> itself.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE collections
            ADD COLUMN embedding_model text,
            ADD COLUMN chunk_tokens integer CHECK (chunk_tokens BETWEEN 8 AND 32768),
            ADD COLUMN chunk_overlap integer CHECK (chunk_overlap >= 0 AND chunk_overlap < chunk_tokens),
            ADD COLUMN text_search_config text CHECK (text_search_config ~ '^[a-z_]{1,63}$'),
            ADD CONSTRAINT text_collection_complete CHECK (
                (embedding_model IS NULL) = (chunk_tokens IS NULL)
                AND (embedding_model IS NULL) = (chunk_overlap IS NULL)
                AND (embedding_model IS NULL) = (text_search_config IS NULL))
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE collections
            DROP CONSTRAINT text_collection_complete,
            DROP COLUMN embedding_model, DROP COLUMN chunk_tokens,
            DROP COLUMN chunk_overlap, DROP COLUMN text_search_config
        """
    )
