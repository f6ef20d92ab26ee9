"""The configured chat models, prepared and loaded in the background at startup, as the
embedding models are (loading.py: the server is ready before its models are)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

from service.config import GenerationModelSettings, GenerationSettings
from service.inference.chat import Generator
from service.inference.loading import BackgroundModels, ModelStatus
from service.inference.local_chat import LocalGenerator
from service.inference.remote_chat import RemoteGenerator
from service.inference.smollm2 import prepare_default


class ChatModelState(msgspec.Struct, kw_only=True):
    name: str
    backend: Literal["local", "remote"]
    n_ctx: int
    status: ModelStatus
    error: str | None = None


class GeneratorRegistry(
    BackgroundModels[GenerationModelSettings, LocalGenerator | RemoteGenerator, ChatModelState]
):
    kind = "chat"
    noun = "chat model"
    section = "generation"
    disabled = "Text generation is switched off on this server (generation.enabled: false)."
    disabled_code = "generation_disabled"
    task_name = "load-chat-models"
    prepare_default = staticmethod(prepare_default)

    def __init__(self, settings: GenerationSettings) -> None:
        self.settings = settings
        states = {
            name: ChatModelState(
                name=name, backend="remote" if model.url else "local", n_ctx=model.n_ctx, status="loading"
            )
            for name, model in settings.models.items()
        }
        super().__init__(
            settings.models, settings.default_model, settings.enabled, settings.cache_dir, states
        )

    def _make(
        self, name: str, model: GenerationModelSettings, path: Path | None
    ) -> LocalGenerator | RemoteGenerator:
        if path is None:
            return RemoteGenerator(name, model, self.settings)
        return LocalGenerator(name, model, self.settings, path)

    def generator(self, name: str | None = None) -> Generator:
        """The model's generator, or the clear error a request should get instead."""
        return self.ready(name)
