"""Text embeddings for tenants: the OpenAI-compatible /embeddings endpoint and the service that
documents and search by text call to embed (with the tenant's costs and usage)."""
