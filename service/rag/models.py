"""Request and response structs of the generation endpoints.

/chat/completions speaks OpenAI's shapes (the fields the official clients send; fields this
server does not know are ignored there, as OpenAI-compatible servers do, so that a newer client
keeps working)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
MaxTokens = Annotated[int, msgspec.Meta(ge=1, le=1_048_576)]


class TextPart(msgspec.Struct, kw_only=True):
    type: Literal["text"]
    text: str


class ChatMessageIn(msgspec.Struct, kw_only=True):
    # "developer" is OpenAI's newer name for "system".
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False


class Grounding(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """vectorhive's extension of the chat completion request: answer the last user message from
    these collections of the tenant (text collections), citing passages as [n]."""

    collections: Annotated[list[str], msgspec.Meta(min_length=1, max_length=8)]
    # Passages retrieved from each collection (rag.top_k when null); the best of all are kept.
    top_k: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None
    mode: Literal["vector", "hybrid"] = "vector"
    filter: dict[str, Any] | None = None


class ChatCompletionRequest(msgspec.Struct, kw_only=True):
    """OpenAI's chat completion request. `n` must be 1. Extension: `vectorhive` grounds the answer
    on collections (with OpenAI's Python client: extra_body={"vectorhive": {...}}); the response
    then carries `citations` (in the last chunk when streaming)."""

    messages: Annotated[list[ChatMessageIn], msgspec.Meta(min_length=1, max_length=1000)]
    # A configured chat model (GET /api/v1/models); null: generation.default_model.
    model: str | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], msgspec.Meta(max_length=4)] | None = None
    seed: int | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] | None = None
    user: str | None = None
    vectorhive: Grounding | None = None


class AssistantMessage(msgspec.Struct, kw_only=True):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(msgspec.Struct, kw_only=True):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class CompletionUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(msgspec.Struct, kw_only=True):
    """The answer (non-streaming). With "stream": true the response is text/event-stream instead:
    `data: <chat.completion.chunk JSON>` events ending with `data: [DONE]`."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage
    system_fingerprint: str | None = None
    # With the vectorhive extension: the passages the answer cites.
    citations: list[Citation] | None = None


class ChunkDelta(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(msgspec.Struct, kw_only=True):
    index: int
    delta: ChunkDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None
    citations: list[Citation] | None = None


# -- grounded answers (native API) ------------------------------------------------------------------

RetrievalMode = Literal["vector", "hybrid"]
Question = Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
TopK = Annotated[int, msgspec.Meta(ge=1, le=100)]


class AnswerRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Give `question`, or `messages` (a conversation whose last message is the user's question;
    earlier turns are kept as history while they fit the model's window)."""

    question: Question | None = None
    messages: Annotated[list[ChatMessageIn], msgspec.Meta(min_length=1, max_length=1000)] | None = None
    top_k: TopK | None = None
    filter: dict[str, Any] | None = None
    mode: RetrievalMode = "vector"
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    # A chat model (generation.models); null: generation.default_model.
    model: str | None = None
    stream: bool = False
    include_context: bool = False
    # false: neither answered from nor stored in the semantic cache.
    cache: bool = True


class Passage(msgspec.Struct, kw_only=True):
    """A retrieved chunk as given to the model: `number` is its [n] in the prompt."""

    number: int
    id: str
    score: float
    text: str
    tokens: int
    document_id: str | None = None
    chunk_index: int | None = None
    collection: str | None = None


class Citation(msgspec.Struct, kw_only=True):
    """A passage the answer cites as [number]; position: where its first mention starts in the
    answer (characters), positions: every mention."""

    number: int
    position: int
    positions: list[int]
    id: str
    score: float
    text: str
    document_id: str | None = None
    chunk_index: int | None = None
    collection: str | None = None


class AnswerUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    retrieval_ms: float
    generation_ms: float


class Answer(msgspec.Struct, kw_only=True):
    """cached: answered from the semantic cache (also the X-Cache header: hit or miss); its usage
    is then the original answer's, and nothing was generated. With stream: true the response is
    text/event-stream: message_start, content ({delta}), citation, message_end ({usage,
    finish_reason}), or error (a problem document) if it fails after it began."""

    answer: str
    citations: list[Citation]
    usage: AnswerUsage
    model: str
    cached: bool
    finish_reason: Literal["stop", "length"]
    context: list[Passage] | None = None


class ContextRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    question: Question
    top_k: TopK | None = None
    filter: dict[str, Any] | None = None
    mode: RetrievalMode = "vector"
    # Token budget of the passages (rag.context_max_tokens when null), in the chat model's tokens.
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_048_576)] | None = None
    # The chat model whose tokenizer counts (null: generation.default_model).
    model: str | None = None


class ContextResult(msgspec.Struct, kw_only=True):
    """The passages a model would be given, best first, within the token budget; `dropped`:
    retrieved passages left out because they did not fit."""

    passages: list[Passage]
    total_tokens: int
    dropped: int
    model: str
    retrieval_ms: float
