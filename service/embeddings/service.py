"""Embedding texts for a tenant: validation, the model call, the token bucket and usage.

Documents, search by text and the /embeddings endpoint all come through here, so every text that
reaches a model was checked the same way and was paid for by the tenant that sent it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from service.auth.principal import TenantPrincipal
from service.config import EmbeddingsSettings
from service.errors import InvalidRequest
from service.inference.base import Embedder, Embeddings, TextTooLong
from service.inference.registry import ModelRegistry
from service.quota.service import QuotaService
from service.quota.usage import UsageMeter

FieldName = Callable[[int], str]


@dataclass(frozen=True, slots=True)
class ModelShape:
    name: str
    dimension: int
    max_tokens: int


def _problem_at(field: str, message: str, code: str | None = None) -> InvalidRequest:
    return InvalidRequest.field(field, message, f"{field}: {message}", code=code)


class EmbeddingService:
    def __init__(
        self,
        registry: ModelRegistry,
        settings: EmbeddingsSettings,
        *,
        quotas: QuotaService | None = None,
        meter: UsageMeter | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.quotas = quotas
        self.meter = meter

    def model(self, name: str | None = None) -> Embedder:
        """The loaded model (default: embeddings.default_model), or the 400/503 that explains why not."""
        return self.registry.embedder(name)

    def describe(self, name: str) -> ModelShape:
        """A model's name, dimension and window, known from config even while it loads (400 if
        there is no such model; 503 if its dimension is known only once it has loaded)."""
        state = self.registry.state(name)
        if state.dimension is None:
            model = self.model(name)
            return ModelShape(name=model.name, dimension=model.dimension, max_tokens=model.max_tokens)
        return ModelShape(name=state.name, dimension=state.dimension, max_tokens=state.max_tokens)

    def check_texts(self, texts: list[str], field: FieldName, *, max_bytes: int | None = None) -> None:
        """Every text non-empty, valid UTF-8 without NUL, and within the size limit (400 naming it)."""
        limit = max_bytes or self.settings.max_input_bytes
        for i, text in enumerate(texts):
            if not text.strip():
                raise _problem_at(field(i), "is empty (or only whitespace): there is nothing to embed")
            if "\x00" in text:
                raise _problem_at(field(i), "contains a NUL character (U+0000)")
            try:
                size = len(text.encode("utf-8"))
            except UnicodeEncodeError:
                raise _problem_at(
                    field(i), "is not valid UTF-8 (it contains a lone surrogate such as \\ud800)"
                ) from None
            if size > limit:
                raise _problem_at(field(i), f"{size} bytes of UTF-8; at most {limit}", code="text_too_large")

    async def embed(
        self,
        principal: TenantPrincipal,
        texts: list[str],
        model: str | None = None,
        *,
        field: FieldName = lambda i: f"input[{i}]",
        internal: bool = False,
    ) -> Embeddings:
        """Vectors for the texts with the named model, charged to the principal's tenant.

        400 for bad texts (named by `field`) or an unknown model; 503 with Retry-After while the
        model is loading, failed, or too busy."""
        # The limits are for texts a client sends; documents were checked whole and their chunks
        # are bounded by documents.max_chunks_per_request instead (internal=True).
        if not internal:
            if len(texts) > self.settings.max_inputs:
                raise _problem_at(
                    "input", f"{len(texts)} texts; at most {self.settings.max_inputs} per request"
                )
            self.check_texts(texts, field)
        embedder = self.model(model)
        if self.quotas is not None:
            await self.quotas.charge(principal.tenant_id, "embedding", len(texts))
        try:
            result = await embedder.embed(texts)
        except TextTooLong as exc:  # named as the caller's field (input[i], text, queries[i].text)
            message = f"{exc.tokens} tokens; model '{embedder.name}' takes at most {exc.limit}"
            raise InvalidRequest.field(
                field(exc.index),
                message,
                f"{field(exc.index)}: {message}. Shorten it, or store it as a document "
                "(documents are split into chunks that fit).",
                code=exc.code,
            ) from None
        if self.meter is not None:
            self.meter.record(principal.tenant_id, "texts_embedded", len(texts))
            self.meter.record(principal.tenant_id, "embedding_tokens", result.total_tokens)
        return result
