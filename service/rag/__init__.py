"""RAG inference: retrieval + generation, citations, SSE, context budget, semantic cache."""
