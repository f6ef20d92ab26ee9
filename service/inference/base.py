"""What every embedding backend offers, and the errors its callers turn into problem+json."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

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
