"""The configured embedding models, prepared and loaded in the background at startup
(loading.py: the server is ready before its models are)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

from service.config import EmbeddingModelSettings, EmbeddingsSettings
from service.inference.base import Embedder
from service.inference.loading import BackgroundModels, ModelStatus, UnknownModel
from service.inference.local import LocalEmbedder
from service.inference.minilm import prepare_default
from service.inference.remote import RemoteEmbedder

__all__ = ["ModelRegistry", "ModelState", "ModelStatus", "UnknownModel"]


class ModelState(msgspec.Struct, kw_only=True):
    name: str
    backend: Literal["local", "remote"]
    dimension: int | None
    max_tokens: int
    status: ModelStatus
    error: str | None = None


class ModelRegistry(BackgroundModels[EmbeddingModelSettings, LocalEmbedder | RemoteEmbedder, ModelState]):
    kind = "embedding"
    section = "embeddings"
    disabled = "Embeddings are switched off on this server (embeddings.enabled: false)."
    disabled_code = "embeddings_disabled"
    task_name = "load-models"
    prepare_default = staticmethod(prepare_default)

    def __init__(self, settings: EmbeddingsSettings) -> None:
        self.settings = settings
        states = {
            name: ModelState(
                name=name,
                backend="remote" if model.url else "local",
                dimension=model.dimension,
                max_tokens=model.max_tokens,
                status="loading",
            )
            for name, model in settings.models.items()
        }
        super().__init__(
            settings.models, settings.default_model, settings.enabled, settings.cache_dir, states
        )

    def _make(
        self, name: str, model: EmbeddingModelSettings, path: Path | None
    ) -> LocalEmbedder | RemoteEmbedder:
        if path is None:
            return RemoteEmbedder(name, model, self.settings)
        return LocalEmbedder(name, model, self.settings, path)

    def _ready(self, state: ModelState, model: LocalEmbedder | RemoteEmbedder) -> None:
        state.dimension = model.dimension

    def embedder(self, name: str | None = None) -> Embedder:
        """The model's embedder, or the clear error a request should get instead."""
        return self.ready(name)
