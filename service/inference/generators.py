"""The configured chat models, prepared and loaded in the background at startup (as the embedding
models are: the server is ready before its models; until a model is loaded its endpoints answer
503 model_loading; a model that cannot be loaded answers 503 model_unavailable naming the option
to fix, and everything else keeps working)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

import msgspec

from service.config import GenerationModelSettings, GenerationSettings
from service.inference.base import ModelUnavailable, local_model_path, raise_unless_ready
from service.inference.chat import Generator
from service.inference.local_chat import LocalGenerator
from service.inference.registry import ModelStatus, UnknownModel
from service.inference.remote_chat import RemoteGenerator
from service.inference.smollm2 import prepare_default

log = logging.getLogger("vectorhive.inference")


class ChatModelState(msgspec.Struct, kw_only=True):
    name: str
    backend: Literal["local", "remote"]
    n_ctx: int
    status: ModelStatus
    error: str | None = None


class GeneratorRegistry:
    def __init__(self, settings: GenerationSettings) -> None:
        self.settings = settings
        self._generators: dict[str, Generator] = {}
        self._states = {
            name: ChatModelState(
                name=name, backend="remote" if model.url else "local", n_ctx=model.n_ctx, status="loading"
            )
            for name, model in settings.models.items()
        }
        self._loading: asyncio.Task[None] | None = None
        self._pending: LocalGenerator | RemoteGenerator | None = None  # being loaded

    @property
    def default_model(self) -> str:
        return self.settings.default_model

    def start(self) -> None:
        """Prepare and load every chat model in the background (the default one first)."""
        if self.settings.enabled and self._loading is None:
            self._loading = asyncio.create_task(self._load_all(), name="load-chat-models")

    async def wait_loaded(self) -> None:
        if self._loading is not None:
            await asyncio.shield(self._loading)

    async def _load_all(self) -> None:
        names = sorted(self.settings.models, key=lambda n: n != self.settings.default_model)
        for name in names:
            await self._load(name, self.settings.models[name])

    async def _load(self, name: str, model: GenerationModelSettings) -> None:
        state = self._states[name]
        started = time.perf_counter()
        generator: LocalGenerator | RemoteGenerator | None = None
        try:
            if model.url is not None:
                generator = RemoteGenerator(name, model, self.settings)
            else:
                path = await asyncio.to_thread(
                    local_model_path, model.path, self.settings.cache_dir, prepare_default
                )
                generator = LocalGenerator(name, model, self.settings, path)
            self._pending = generator
            await generator.load()
        except asyncio.CancelledError:
            # Shutting down while the model loads: its thread cannot be interrupted; close() waits
            # for it and frees the model before the process goes on to exit.
            raise
        except Exception as exc:
            if generator is not None:
                await generator.close()
            state.status, state.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error(
                "chat model could not be loaded; its endpoints answer 503",
                extra={"model": name, "error": state.error, "option": f"generation.models.{name}.path"},
            )
            return
        self._pending = None
        self._generators[name] = generator
        state.status = "ready"
        log.info(
            "chat model ready", extra={"model": name, "seconds": round(time.perf_counter() - started, 3)}
        )

    def states(self) -> list[ChatModelState]:
        return list(self._states.values())

    def generator(self, name: str | None = None) -> Generator:
        """The model's generator, or the clear error a request should get instead."""
        name = name or self.settings.default_model
        if not self.settings.enabled:
            raise ModelUnavailable(
                "Text generation is switched off on this server (generation.enabled: false).",
                code="generation_disabled",
            )
        state = self._states.get(name)
        if state is None:
            known = ", ".join(sorted(self._states)) or "none"
            raise UnknownModel(
                f"There is no chat model '{name}' (available: {known}).",
                errors=[{"field": "model", "message": f"one of: {known}"}],
            )
        raise_unless_ready(name, state.status, state.backend, state.error, "generation")
        return self._generators[name]

    async def close(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
            await asyncio.gather(self._loading, return_exceptions=True)
        if self._pending is not None:
            await self._pending.close()  # waits (off the event loop) for a load in progress
            self._pending = None
        for generator in self._generators.values():
            await generator.close()
        self._generators.clear()
