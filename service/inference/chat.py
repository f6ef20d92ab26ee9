"""What every chat (generation) backend offers: a prompt checked and admitted up front, then a
stream of text pieces ending in a Finished event with the token counts.

start() does everything that can fail cleanly before an HTTP response has begun (unknown model,
prompt longer than the window, a full queue), so those are problem+json answers with a status;
what fails after that arrives as an exception out of the stream, which the API turns into an
error event of the stream it had begun.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from service.errors import InvalidRequest

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class GenerationParams:
    max_tokens: int
    temperature: float
    top_p: float = 0.95
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of the answer's text, as the model produced it."""

    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    # Seconds from admission to the first token and to the last one (queue wait included).
    first_token_seconds: float | None = None
    total_seconds: float = 0.0


GenerationEvent = Delta | Finished


class GenerationStream(Protocol):
    """An admitted generation. Iterate for its events; aclose() frees the model at once (a client
    that went away), and leaving the iteration early does the same."""

    prompt_tokens: int

    @property
    def generated_tokens(self) -> int:
        """Completion tokens so far (exact once Finished has come): what a stream that was closed
        early still cost, for metering."""
        ...

    def __aiter__(self) -> AsyncIterator[GenerationEvent]: ...

    async def aclose(self) -> None: ...


class Generator(Protocol):
    name: str
    n_ctx: int

    async def start(self, messages: list[ChatMessage], params: GenerationParams) -> GenerationStream:
        """Check the prompt against the window and queue it: ContextTooLong (400), ModelUnavailable
        (503 model_busy / model_unavailable) before anything is generated."""
        ...

    async def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens each text takes in the model's window (no special tokens): the context budget."""
        ...

    async def prompt_tokens(self, messages: list[ChatMessage]) -> int:
        """Tokens the messages take once put through the model's chat template."""
        ...

    async def close(self) -> None: ...


class ContextTooLong(InvalidRequest):
    """The prompt alone fills the model's window: refused, never silently cut."""

    code = "context_too_long"

    def __init__(self, *, prompt_tokens: int, limit: int, model: str, option: str) -> None:
        super().__init__(
            f"The prompt takes {prompt_tokens} tokens; model '{model}' has a window of {limit} tokens "
            f"({option}) and needs room for at least one completion token. Shorten the messages.",
            errors=[{"field": "messages", "message": f"{prompt_tokens} tokens; the window is {limit}"}],
            extra={"prompt_tokens": prompt_tokens, "limit": limit},
        )


@dataclass(slots=True)
class Collected:
    text: str
    finished: Finished
    pieces: list[str] = field(default_factory=list)


async def collect(stream: GenerationStream) -> Collected:
    """The whole answer of a stream (the non-streaming endpoints)."""
    pieces: list[str] = []
    finished: Finished | None = None
    try:
        async for event in stream:
            if isinstance(event, Delta):
                pieces.append(event.text)
            else:
                finished = event
    finally:
        await stream.aclose()
    assert finished is not None, "a generation stream ends with Finished"
    return Collected(text="".join(pieces), finished=finished, pieces=pieces)
