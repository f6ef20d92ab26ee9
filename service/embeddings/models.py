"""Request and response shapes of the embeddings API (OpenAI's /v1/embeddings and /v1/models)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from service.inference.generators import ChatModelState
from service.inference.registry import ModelState


class EmbeddingsRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """OpenAI's shape. `input` is one text or a list of texts (token arrays are not accepted);
    `model` defaults to embeddings.default_model; `dimensions`, if given, must equal the model's
    (vectors are not shortened); `user` is accepted and ignored."""

    input: str | list[str | int | list[int]]
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, msgspec.Meta(ge=1)] | None = None
    user: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class EmbeddingItem(msgspec.Struct, kw_only=True):
    """embedding: a list of floats, or with encoding_format base64 the little-endian float32
    bytes in base64."""

    object: Literal["embedding"]
    embedding: list[float] | str
    index: int


class EmbeddingsUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(msgspec.Struct, kw_only=True):
    object: Literal["list"]
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingsUsage


class ModelCard(msgspec.Struct, kw_only=True, omit_defaults=True):
    """OpenAI's model object, with what a client needs to bind a collection to it."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    kind: Literal["embedding", "chat"]
    backend: Literal["local", "remote"]
    dimension: int | None  # embedding models: the vectors' length
    max_tokens: int  # embedding models: the longest text; chat models: the context window
    status: str
    error: str | None = None


class ModelList(msgspec.Struct, kw_only=True):
    object: Literal["list"]
    data: list[ModelCard]


def chat_model_card(state: ChatModelState, default: str) -> ModelCard:
    return ModelCard(
        id=state.name,
        object="model",
        created=0,
        owned_by="vectorhive" + (" (default)" if state.name == default else ""),
        kind="chat",
        backend=state.backend,
        dimension=None,
        max_tokens=state.n_ctx,
        status=state.status,
        error=state.error,
    )


def model_card(state: ModelState, default: str) -> ModelCard:
    return ModelCard(
        id=state.name,
        object="model",
        created=0,
        owned_by="vectorhive" + (" (default)" if state.name == default else ""),
        kind="embedding",
        backend=state.backend,
        dimension=state.dimension,
        max_tokens=state.max_tokens,
        status=state.status,
        error=state.error,
    )
