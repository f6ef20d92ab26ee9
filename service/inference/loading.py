"""Configured models, prepared and loaded in the background at startup: what the embedding and
the chat registries share.

The server is ready before its models are: until a model is loaded its endpoints answer 503
model_loading (with Retry-After); a model that cannot be loaded answers 503 model_unavailable
naming the option to fix, and everything else keeps working.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Generic, Literal, Protocol, TypeVar

from service.errors import InvalidRequest
from service.inference.base import ModelUnavailable, local_model_path, raise_unless_ready

log = logging.getLogger("vectorhive.inference")

ModelStatus = Literal["loading", "ready", "failed"]


class Loadable(Protocol):
    async def load(self) -> None: ...
    async def close(self) -> None: ...


class ModelSettings(Protocol):
    @property
    def url(self) -> str | None: ...
    @property
    def path(self) -> str: ...


class StateFields(Protocol):
    name: str
    backend: Literal["local", "remote"]
    status: ModelStatus
    error: str | None


class UnknownModel(InvalidRequest):
    code = "unknown_model"


M = TypeVar("M", bound=Loadable)
S = TypeVar("S", bound=StateFields)
C = TypeVar("C", bound=ModelSettings)


class BackgroundModels(Generic[C, M, S]):
    """Loads each configured model in the background (the default one first) and keeps its state.

    Subclasses say how a model is made (`_make`, from its settings and, for a local one, its file)
    and what a loaded model adds to its state (`_ready`)."""

    kind = ""  # in log lines: "embedding" | "chat" (model ready, ...)
    noun = "model"  # in a 400 unknown_model: "There is no <noun> 'x'"
    section = ""  # the settings section (embeddings | generation), for the options messages name
    disabled = ""  # the 503 when the section is switched off: its detail ...
    disabled_code = ""  # ... and its code
    task_name = ""  # of the background task that loads the models
    # Download (or find) the built-in default model's file (cache_dir -> path): blocking.
    prepare_default: Callable[[Path], Path]

    def __init__(
        self,
        models: Mapping[str, C],
        default_model: str,
        enabled: bool,
        cache_dir: str,
        states: dict[str, S],
    ) -> None:
        self._models = models
        self._default = default_model
        self._enabled = enabled
        self._cache_dir = cache_dir
        self._states = states
        self._loaded: dict[str, M] = {}
        self._loading: asyncio.Task[None] | None = None
        self._pending: M | None = None  # being loaded

    @property
    def default_model(self) -> str:
        return self._default

    def start(self) -> None:
        """Prepare and load every model in the background (the default one first)."""
        if self._enabled and self._loading is None:
            self._loading = asyncio.create_task(self._load_all(), name=self.task_name)

    async def wait_loaded(self) -> None:
        if self._loading is not None:
            await asyncio.shield(self._loading)

    async def _load_all(self) -> None:
        names = sorted(self._models, key=lambda n: n != self._default)
        for name in names:
            await self._load(name, self._models[name])

    def _make(self, name: str, model: C, path: Path | None) -> M:
        """The model's backend: remote when path is None, else the local file at path."""
        raise NotImplementedError

    def _ready(self, state: S, model: M) -> None:
        """What a loaded model adds to its state (beyond status ready)."""

    async def _load(self, name: str, settings: C) -> None:
        state = self._states[name]
        started = time.perf_counter()
        model: M | None = None
        try:
            path = None
            if settings.url is None:
                path = await asyncio.to_thread(
                    local_model_path, settings.path, self._cache_dir, type(self).prepare_default
                )
            model = self._make(name, settings, path)
            self._pending = model
            await model.load()
        except asyncio.CancelledError:
            # Shutting down while the model loads: its thread cannot be interrupted; close() waits
            # for it and frees the model before the process goes on to exit.
            raise
        except Exception as exc:
            self._pending = None
            if model is not None:
                await model.close()
            state.status, state.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error(
                f"{self.kind} model could not be loaded; its endpoints answer 503",
                extra={"model": name, "error": state.error, "option": f"{self.section}.models.{name}.path"},
            )
            return
        self._pending = None
        self._loaded[name] = model
        state.status = "ready"
        self._ready(state, model)
        log.info(
            f"{self.kind} model ready",
            extra={"model": name, "seconds": round(time.perf_counter() - started, 3)},
        )

    def states(self) -> list[S]:
        return list(self._states.values())

    def state(self, name: str | None = None) -> S:
        """A configured model's state (400 unknown_model; 503 when the section is switched off)."""
        name = name or self._default
        if not self._enabled:
            raise ModelUnavailable(self.disabled, code=self.disabled_code)
        state = self._states.get(name)
        if state is None:
            known = ", ".join(sorted(self._states)) or "none"
            raise UnknownModel.field(
                "model", f"one of: {known}", f"There is no {self.noun} '{name}' (available: {known})."
            )
        return state

    def ready(self, name: str | None = None) -> M:
        """The loaded model, or the clear error a request should get instead."""
        state = self.state(name)
        raise_unless_ready(state.name, state.status, state.backend, state.error, self.section)
        return self._loaded[state.name]

    async def close(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
            await asyncio.gather(self._loading, return_exceptions=True)
        if self._pending is not None:
            await self._pending.close()  # waits (off the event loop) for a load in progress
            self._pending = None
        for model in self._loaded.values():
            await model.close()
        self._loaded.clear()
