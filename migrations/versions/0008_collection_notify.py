"""Collections tell every server process when they change in a way a cached row must follow.

Server processes cache collection rows for the search path (CollectionService). A trigger, not
the code paths that drop or index collections, sends the notification, so no writer (a request,
an import, the index builder, the session sweep, another version during a rolling upgrade) can
forget it. Payload "<tenant id>:<name>" on channel vectorhive_collections; sent at commit.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION vectorhive_collection_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('vectorhive_collections', OLD.tenant_id || ':' || OLD.name);
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER collections_changed
            AFTER DELETE OR UPDATE OF name, index_status ON collections
            FOR EACH ROW EXECUTE FUNCTION vectorhive_collection_changed()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER collections_changed ON collections")
    op.execute("DROP FUNCTION vectorhive_collection_changed()")
