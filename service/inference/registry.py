"""The configured embedding models, prepared and loaded in the background at startup.

The server is ready before its models are: until a model is loaded its endpoints answer 503
model_loading (with Retry-After); a model that cannot be loaded answers 503 model_unavailable
naming the option to fix, and everything else keeps working.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

import msgspec

from service.config import EmbeddingModelSettings, EmbeddingsSettings
from service.errors import InvalidRequest
from service.inference.base import Embedder, ModelUnavailable, local_model_path, raise_unless_ready
from service.inference.local import LocalEmbedder
from service.inference.minilm import prepare_default
from service.inference.remote import RemoteEmbedder

log = logging.getLogger("vectorhive.inference")

ModelStatus = Literal["loading", "ready", "failed"]


class ModelState(msgspec.Struct, kw_only=True):
    name: str
    backend: Literal["local", "remote"]
    dimension: int | None
    max_tokens: int
    status: ModelStatus
    error: str | None = None


class UnknownModel(InvalidRequest):
    code = "unknown_model"


class ModelRegistry:
    def __init__(self, settings: EmbeddingsSettings) -> None:
        self.settings = settings
        self._embedders: dict[str, Embedder] = {}
        self._states = {
            name: ModelState(
                name=name,
                backend="remote" if model.url else "local",
                dimension=model.dimension,
                max_tokens=model.max_tokens,
                status="loading",
            )
            for name, model in settings.models.items()
        }
        self._loading: asyncio.Task[None] | None = None

    @property
    def default_model(self) -> str:
        return self.settings.default_model

    def start(self) -> None:
        """Prepare and load every model in the background (the default one first)."""
        if self.settings.enabled and self._loading is None:
            self._loading = asyncio.create_task(self._load_all(), name="load-models")

    async def wait_loaded(self) -> None:
        if self._loading is not None:
            await asyncio.shield(self._loading)

    async def _load_all(self) -> None:
        names = sorted(self.settings.models, key=lambda n: n != self.settings.default_model)
        for name in names:
            await self._load(name, self.settings.models[name])

    async def _load(self, name: str, model: EmbeddingModelSettings) -> None:
        state = self._states[name]
        started = time.perf_counter()
        embedder: LocalEmbedder | RemoteEmbedder | None = None
        try:
            if model.url is not None:
                embedder = RemoteEmbedder(name, model, self.settings)
            else:
                path = await asyncio.to_thread(
                    local_model_path, model.path, self.settings.cache_dir, prepare_default
                )
                embedder = LocalEmbedder(name, model, self.settings, path)
            await embedder.load()
        except Exception as exc:
            if embedder is not None:
                await embedder.close()
            state.status, state.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error(
                "embedding model could not be loaded; its endpoints answer 503",
                extra={"model": name, "error": state.error, "option": f"embeddings.models.{name}.path"},
            )
            return
        self._embedders[name] = embedder
        state.status, state.dimension = "ready", embedder.dimension
        log.info(
            "embedding model ready", extra={"model": name, "seconds": round(time.perf_counter() - started, 3)}
        )

    def states(self) -> list[ModelState]:
        return list(self._states.values())

    def state(self, name: str | None = None) -> ModelState:
        """A configured model's state (400 unknown_model; 503 when embeddings are switched off)."""
        name = name or self.settings.default_model
        if not self.settings.enabled:
            raise ModelUnavailable(
                "Embeddings are switched off on this server (embeddings.enabled: false).",
                code="embeddings_disabled",
            )
        state = self._states.get(name)
        if state is None:
            known = ", ".join(sorted(self._states)) or "none"
            raise UnknownModel(
                f"There is no model '{name}' (available: {known}).",
                errors=[{"field": "model", "message": f"one of: {known}"}],
            )
        return state

    def embedder(self, name: str | None = None) -> Embedder:
        """The model's embedder, or the clear error a request should get instead."""
        state = self.state(name)
        raise_unless_ready(state.name, state.status, state.backend, state.error, "embeddings")
        return self._embedders[state.name]

    async def close(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
            await asyncio.gather(self._loading, return_exceptions=True)
        for embedder in self._embedders.values():
            await embedder.close()
        self._embedders.clear()
