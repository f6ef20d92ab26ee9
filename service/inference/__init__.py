"""The model registry: local GGUF files (llama-cpp-python) or remote OpenAI-compatible servers,
each instance serialised behind a bounded queue. Features call `ModelRegistry.embedder(name)`."""
