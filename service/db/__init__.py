"""PostgreSQL: the embedded server, migrations, the asyncpg pool and the two kinds of connection."""

from service.db.connections import ServiceConnection, TenantConnection, enter_tenant
from service.db.database import Database

__all__ = ["Database", "ServiceConnection", "TenantConnection", "enter_tenant"]
