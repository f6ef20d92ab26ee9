"""Collections, their vectors, and search: each collection a PostgreSQL table with its own HNSW index."""
