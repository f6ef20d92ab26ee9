"""PostgreSQL: the embedded server, migrations and the asyncpg pool."""

from service.db.database import Database

__all__ = ["Database"]
