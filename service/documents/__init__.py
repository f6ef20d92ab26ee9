"""Text documents in collections bound to an embedding model: chunking, embedding, bookkeeping."""
