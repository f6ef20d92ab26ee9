"""Grounded answers for a tenant: retrieval from its text collections (retrieval.py), the prompt
fitted into the chat model's window (prompt.py), generation (GenerationService), citations, and
the semantic cache in front (cache.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from service.auth.principal import TenantPrincipal
from service.collections.models import SearchHit
from service.collections.service import CollectionService
from service.config import RagSettings
from service.db import Database
from service.embeddings.service import EmbeddingService
from service.errors import InvalidRequest
from service.inference.chat import ChatMessage, Finished
from service.rag.cache import AnswerCache, CacheSlot
from service.rag.models import (
    Answer,
    AnswerRequest,
    AnswerUsage,
    ChatCompletionRequest,
    Citation,
    ContextRequest,
    ContextResult,
    Passage,
)
from service.rag.prompt import cited_positions, fit
from service.rag.retrieval import Retriever, passages
from service.rag.service import Generation, GenerationService, to_chat_messages


@dataclass(eq=False)
class Grounded:
    """Retrieval done and the prompt fitted: the passages and the messages for the model."""

    question: str
    passages: list[Passage]
    messages: list[ChatMessage]
    retrieval_ms: float
    # Semantic cache: where this answer is stored (None: not cached).
    cache_slot: CacheSlot | None = None


@dataclass(eq=False)
class AnswerRun:
    """Either a cached answer, or a live generation over grounded passages (finish() builds the
    answer from its text and stores it in the cache)."""

    model: str
    cached: Answer | None = None
    generation: Generation | None = None
    grounded: Grounded | None = None
    include_context: bool = False

    def citations(self, text: str) -> list[Citation]:
        assert self.grounded is not None
        passages = self.grounded.passages
        found = cited_positions(text, len(passages))
        citations = []
        for number in sorted(found):
            passage = passages[number - 1]
            citations.append(
                Citation(
                    number=number,
                    position=found[number][0],
                    positions=found[number],
                    id=passage.id,
                    score=passage.score,
                    text=passage.text,
                    document_id=passage.document_id,
                    chunk_index=passage.chunk_index,
                    collection=passage.collection,
                )
            )
        return citations

    def answer(self, text: str, finished: Finished) -> Answer:
        assert self.grounded is not None
        return Answer(
            answer=text,
            citations=self.citations(text),
            usage=AnswerUsage(
                prompt_tokens=finished.prompt_tokens,
                completion_tokens=finished.completion_tokens,
                retrieval_ms=self.grounded.retrieval_ms,
                generation_ms=round(finished.total_seconds * 1000, 3),
            ),
            model=self.model,
            cached=False,
            finish_reason="length" if finished.finish_reason == "length" else "stop",
            context=self.grounded.passages,
        )

    def shown(self, answer: Answer) -> Answer:
        """The answer as the client asked for it (passages only with include_context)."""
        return msgspec.structs.replace(answer, context=answer.context if self.include_context else None)


class RagService:
    """Retrieve from a tenant's text collection, fit the passages into the model's window, answer
    with citations; the semantic cache in front."""

    def __init__(
        self,
        db: Database,
        collections: CollectionService,
        embeddings: EmbeddingService,
        generation: GenerationService,
        settings: RagSettings,
    ) -> None:
        self.collections = collections
        self.generation = generation
        self.settings = settings
        self.retriever = Retriever(collections, embeddings, generation.generators, settings)
        self.cache = AnswerCache(db, settings)

    async def context(self, principal: TenantPrincipal, name: str, request: ContextRequest) -> ContextResult:
        return await self.retriever.context(principal, name, request)

    @staticmethod
    def _conversation(request: AnswerRequest) -> tuple[str, list[ChatMessage]]:
        if (request.question is None) == (request.messages is None):
            raise InvalidRequest.field(
                "question",
                "give exactly one of 'question' and 'messages'",
                "Give exactly one of 'question' and 'messages'.",
            )
        if request.question is not None:
            return request.question, []
        assert request.messages is not None
        last = request.messages[-1]
        if last.role != "user" or not last.text().strip():
            raise InvalidRequest.field(
                f"messages[{len(request.messages) - 1}]",
                "not a user question",
                "The last message must be the user's question.",
            )
        history = to_chat_messages(request.messages[:-1])
        return last.text(), history

    async def answer(self, principal: TenantPrincipal, name: str, request: AnswerRequest) -> AnswerRun:
        """Admit an answer: from the cache, or retrieval done and the generation admitted and
        charged (errors here are the request's status)."""
        question, history = self._conversation(request)
        row = await self.collections.text_collection(principal, name)
        generator = self.generation.generators.generator(request.model)
        params = self.generation.params(max_tokens=request.max_tokens, temperature=request.temperature)
        field = "question" if request.question is not None else f"messages[{len(history)}].content"
        # The question (and what history fits) must leave room in the window before any work.
        await fit(generator, question, history, [], reserve=params.max_tokens)
        vector = await self.retriever.question_vector(principal, row, question, field)

        slot = None
        if self.settings.cache_enabled and request.cache and not history:
            slot = self.cache.slot(principal.tenant_id, row, generator.name, request, params, vector)
            cached = await self.cache.lookup(slot)
            if cached is not None:
                return AnswerRun(model=cached.model, cached=cached, include_context=request.include_context)

        hits, retrieval_ms = await self.retriever.retrieve(
            principal, name, question, vector, top_k=request.top_k, filter=request.filter, mode=request.mode
        )
        fitted = await fit(
            generator, question, history, [hit.text or "" for hit in hits], reserve=params.max_tokens
        )
        grounded = Grounded(
            question=question,
            passages=passages(hits, fitted.chosen, fitted.tokens, [name] * fitted.chosen),
            messages=fitted.messages,
            retrieval_ms=retrieval_ms,
            cache_slot=slot,
        )
        generation = await self.generation.generate(
            principal, fitted.messages, params, model=generator.name, operation="answer"
        )
        return AnswerRun(
            model=generation.model,
            generation=generation,
            grounded=grounded,
            include_context=request.include_context,
        )

    async def remember(self, run: AnswerRun, answer: Answer) -> None:
        """Store a finished answer in the semantic cache (if the request allowed it). A failure to
        store is logged, never the request's failure."""
        if run.grounded is not None and run.grounded.cache_slot is not None:
            await self.cache.remember(run.grounded.cache_slot, run.grounded.question, answer)

    async def prune_cache(self) -> None:
        """Periodic: expired and invalidated entries go; the entries gauge is refreshed."""
        await self.cache.prune()

    # -- /chat/completions with the vectorhive extension ---------------------------------------------

    async def chat(self, principal: TenantPrincipal, request: ChatCompletionRequest) -> AnswerRun:
        """Plain generation, or, with request.vectorhive, an answer grounded on the named
        collections: the last user message is the question, earlier messages the history. Each
        collection is searched with its own embedding model; the best passages of all, by score,
        are numbered and fitted. Not cached (a conversation's history changes the answer)."""
        grounding = request.vectorhive
        if grounding is None:
            generation = await self.generation.chat(principal, request)
            return AnswerRun(model=generation.model, generation=generation)
        messages = to_chat_messages(request.messages)
        last = messages[-1]
        if last.role != "user" or not last.content.strip():
            field = f"messages[{len(messages) - 1}]"
            raise InvalidRequest.field(
                field,
                "not a user question",
                "With vectorhive.collections, the last message must be the user's question.",
            )
        if len(set(grounding.collections)) != len(grounding.collections):
            raise InvalidRequest.field(
                "vectorhive.collections", "duplicates", "vectorhive.collections names a collection twice."
            )
        question, history = last.content, messages[:-1]
        generator = self.generation.generators.generator(request.model)
        params = self.generation.chat_params(request)
        await fit(generator, question, history, [], reserve=params.max_tokens)
        found: list[tuple[SearchHit, str]] = []
        retrieval_ms = 0.0
        for name in grounding.collections:
            row = await self.collections.text_collection(principal, name)
            vector = await self.retriever.question_vector(
                principal, row, question, f"messages[{len(history)}].content"
            )
            hits, ms = await self.retriever.retrieve(
                principal, name, question, vector, top_k=grounding.top_k, filter=grounding.filter,
                mode=grounding.mode,
            )  # fmt: skip
            retrieval_ms += ms
            found.extend((hit, name) for hit in hits)
        found.sort(key=lambda pair: -pair[0].score)
        found = found[: grounding.top_k or self.settings.top_k]
        hits = [hit for hit, _ in found]
        fitted = await fit(
            generator, question, history, [h.text or "" for h in hits], reserve=params.max_tokens
        )
        grounded = Grounded(
            question=question,
            passages=passages(hits, fitted.chosen, fitted.tokens, [name for _, name in found]),
            messages=fitted.messages,
            retrieval_ms=round(retrieval_ms, 3),
        )
        generation = await self.generation.generate(
            principal, fitted.messages, params, model=generator.name, operation="chat"
        )
        return AnswerRun(model=generation.model, generation=generation, grounded=grounded)
