"""vectorhive: a multi-tenant, managed vector database service on PostgreSQL + pgvector."""

__version__ = "0.1.0"
