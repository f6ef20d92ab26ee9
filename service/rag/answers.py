"""Grounded answers for a tenant: retrieval from its text collection (CollectionService), the
prompt fitted into the chat model's window (prompt.py), generation (GenerationService), citations,
and the semantic cache in front (store.py, migration 0006).

The cache: keyed by tenant (row-level security), collection, the collection's data_version (any
write moves it on, so older answers never match again), and a digest of the chat model, the
prompt template and the retrieval and generation parameters; matched by the question's embedding
(cosine >= rag.cache_similarity). Only single questions are cached (a conversation's history
changes the answer). A hit charges the question's embedding and nothing else.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from service.auth.principal import Principal
from service.collections.models import SearchHit, SearchMode, SearchRequest
from service.collections.service import CollectionService
from service.collections.store import CollectionRow
from service.config import RagSettings
from service.db import Database
from service.embeddings.service import EmbeddingService
from service.errors import InvalidRequest
from service.inference.chat import (
    ChatMessage,
    Finished,
    GenerationParams,
)
from service.metrics import RAG_CACHE_ENTRIES, RAG_CACHE_LOOKUPS, RAG_CACHE_STORED
from service.rag import store
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
from service.rag.prompt import cache_fields, cited_positions, fit
from service.rag.service import Generation, GenerationService, to_chat_messages

log = logging.getLogger("vectorhive.rag")


# -- grounded answers ------------------------------------------------------------------------------


@dataclass(eq=False)
class Grounded:
    """Retrieval done and the prompt fitted: the passages and the messages for the model."""

    question: str
    passages: list[Passage]
    messages: list[ChatMessage]
    retrieval_ms: float
    # Semantic cache: where this answer is stored (None: not cached).
    cache_slot: CacheSlot | None = None


@dataclass(frozen=True, slots=True)
class CacheSlot:
    tenant_id: str
    collection_id: int
    data_version: int
    key: str
    embedding: np.ndarray[Any, Any]


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
    with citations; the semantic cache in front (store.py, migration 0006)."""

    def __init__(
        self,
        db: Database,
        collections: CollectionService,
        embeddings: EmbeddingService,
        generation: GenerationService,
        settings: RagSettings,
    ) -> None:
        self.db = db
        self.collections = collections
        self.embeddings = embeddings
        self.generation = generation
        self.settings = settings

    async def _retrieve(
        self,
        principal: Principal,
        name: str,
        question: str,
        vector: np.ndarray[Any, Any],
        *,
        top_k: int | None,
        filter: dict[str, Any] | None,
        mode: str,
    ) -> tuple[list[SearchHit], float]:
        started = time.perf_counter()
        request = SearchRequest(
            vector=vector.tolist(),
            text=question if mode == "hybrid" else None,
            mode=SearchMode(mode),
            top_k=top_k or self.settings.top_k,
            filter=filter,
            include_metadata=False,
        )
        result = await self.collections.search(principal, name, request)
        return result.results, round((time.perf_counter() - started) * 1000, 3)

    async def _question_vector(
        self, principal: Principal, row: CollectionRow, question: str, field: str
    ) -> np.ndarray[Any, Any]:
        embedded = await self.embeddings.embed(
            principal, [question], row.embedding_model, field=lambda _: field
        )
        vector: np.ndarray[Any, Any] = embedded.vectors[0]
        return vector

    @staticmethod
    def _passages(
        hits: list[SearchHit], fitted_count: int, tokens: list[int], collections: list[str]
    ) -> list[Passage]:
        """collections: the collection each hit came from."""
        return [
            Passage(
                number=i + 1,
                id=hit.id,
                score=hit.score,
                text=hit.text or "",
                tokens=tokens[i],
                document_id=hit.document_id,
                chunk_index=hit.chunk_index,
                collection=collections[i],
            )
            for i, hit in enumerate(hits[:fitted_count])
        ]

    async def context(self, principal: Principal, name: str, request: ContextRequest) -> ContextResult:
        row = await self.collections.text_collection(principal, name)
        generator = self.generation.generators.generator(request.model)
        vector = await self._question_vector(principal, row, request.question, "question")
        hits, retrieval_ms = await self._retrieve(
            principal, name, request.question, vector, top_k=request.top_k, filter=request.filter,
            mode=request.mode,
        )  # fmt: skip
        budget = request.max_tokens or self.settings.context_max_tokens
        texts = [hit.text or "" for hit in hits]
        counts = await generator.count_tokens(texts) if texts else []
        chosen: list[int] = []
        used = 0
        for count in counts:
            if used + count > budget:
                break
            used += count
            chosen.append(count)
        passages = self._passages(hits, len(chosen), chosen, [name] * len(chosen))
        return ContextResult(
            passages=passages,
            total_tokens=used,
            dropped=len(hits) - len(passages),
            model=generator.name,
            retrieval_ms=retrieval_ms,
        )

    @staticmethod
    def _conversation(request: AnswerRequest) -> tuple[str, list[ChatMessage]]:
        if (request.question is None) == (request.messages is None):
            raise InvalidRequest(
                "Give exactly one of 'question' and 'messages'.",
                errors=[{"field": "question", "message": "give exactly one of 'question' and 'messages'"}],
            )
        if request.question is not None:
            return request.question, []
        assert request.messages is not None
        last = request.messages[-1]
        if last.role != "user" or not last.text().strip():
            raise InvalidRequest(
                "The last message must be the user's question.",
                errors=[
                    {"field": f"messages[{len(request.messages) - 1}]", "message": "not a user question"}
                ],
            )
        history = to_chat_messages(request.messages[:-1])
        return last.text(), history

    def _cache_key(
        self, row: CollectionRow, model: str, request: AnswerRequest, params: GenerationParams
    ) -> str:
        fields = cache_fields(
            chat_model=model,
            embedding_model=row.embedding_model,
            top_k=request.top_k or self.settings.top_k,
            mode=request.mode,
            filter=request.filter,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
        )
        return hashlib.sha256(msgspec.json.encode(fields, order="sorted")).hexdigest()

    async def answer(self, principal: Principal, name: str, request: AnswerRequest) -> AnswerRun:
        """Admit an answer: from the cache, or retrieval done and the generation admitted and
        charged (errors here are the request's status)."""
        tenant_id = principal.require_tenant()
        question, history = self._conversation(request)
        row = await self.collections.text_collection(principal, name)
        generator = self.generation.generators.generator(request.model)
        params = self.generation.params(max_tokens=request.max_tokens, temperature=request.temperature)
        field = "question" if request.question is not None else f"messages[{len(history)}].content"
        # The question (and what history fits) must leave room in the window before any work.
        await fit(generator, question, history, [], reserve=params.max_tokens)
        vector = await self._question_vector(principal, row, question, field)

        slot = None
        if self.settings.cache_enabled and request.cache and not history:
            slot = CacheSlot(
                tenant_id,
                row.id,
                row.data_version,
                self._cache_key(row, generator.name, request, params),
                vector,
            )
            cached = await self._cache_lookup(slot)
            if cached is not None:
                run = AnswerRun(model=cached.model, cached=cached, include_context=request.include_context)
                return run
        if slot is not None:
            RAG_CACHE_LOOKUPS.labels("miss").inc()

        hits, retrieval_ms = await self._retrieve(
            principal, name, question, vector, top_k=request.top_k, filter=request.filter, mode=request.mode
        )
        fitted = await fit(
            generator, question, history, [hit.text or "" for hit in hits], reserve=params.max_tokens
        )
        grounded = Grounded(
            question=question,
            passages=self._passages(hits, fitted.chosen, fitted.tokens, [name] * fitted.chosen),
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

    async def _cache_lookup(self, slot: CacheSlot) -> Answer | None:
        async with self.db.tenant_transaction(slot.tenant_id) as conn:
            found = await store.lookup(
                conn,
                collection_id=slot.collection_id,
                data_version=slot.data_version,
                cache_key=slot.key,
                embedding=slot.embedding,
            )
            if found is None or found[1] < self.settings.cache_similarity:
                return None
            await store.record_hit(conn, found[0])
        RAG_CACHE_LOOKUPS.labels("hit").inc()
        cached = msgspec.json.decode(found[2], type=Answer)
        return msgspec.structs.replace(cached, cached=True)

    async def remember(self, run: AnswerRun, answer: Answer) -> None:
        """Store a finished answer in the semantic cache (if the request allowed it). A failure to
        store is logged, never the request's failure."""
        slot = run.grounded.cache_slot if run.grounded is not None else None
        if slot is None or not answer.answer.strip():
            return
        try:
            async with self.db.tenant_transaction(slot.tenant_id) as conn:
                await store.insert(
                    conn,
                    collection_id=slot.collection_id,
                    data_version=slot.data_version,
                    cache_key=slot.key,
                    embedding=slot.embedding,
                    question=run.grounded.question if run.grounded is not None else "",
                    answer_json=msgspec.json.encode(answer).decode(),
                    ttl_seconds=self.settings.cache_ttl_seconds,
                    max_entries=self.settings.cache_max_entries_per_tenant,
                )
        except Exception:
            log.warning("could not store an answer in the semantic cache", exc_info=True)
            return
        RAG_CACHE_STORED.inc()

    async def prune_cache(self) -> None:
        """Periodic: expired and invalidated entries go; the entries gauge is refreshed."""
        async with self.db.transaction() as conn:
            RAG_CACHE_ENTRIES.set(await store.prune_and_count(conn))

    # -- /chat/completions with the vectorhive extension ---------------------------------------------

    async def chat(self, principal: Principal, request: ChatCompletionRequest) -> AnswerRun:
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
            raise InvalidRequest(
                "With vectorhive.collections, the last message must be the user's question.",
                errors=[{"field": field, "message": "not a user question"}],
            )
        if len(set(grounding.collections)) != len(grounding.collections):
            raise InvalidRequest(
                "vectorhive.collections names a collection twice.",
                errors=[{"field": "vectorhive.collections", "message": "duplicates"}],
            )
        question, history = last.content, messages[:-1]
        generator = self.generation.generators.generator(request.model)
        params = self.generation.chat_params(request)
        await fit(generator, question, history, [], reserve=params.max_tokens)
        found: list[tuple[SearchHit, str]] = []
        retrieval_ms = 0.0
        for name in grounding.collections:
            row = await self.collections.text_collection(principal, name)
            vector = await self._question_vector(
                principal, row, question, f"messages[{len(history)}].content"
            )
            hits, ms = await self._retrieve(
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
            passages=self._passages(hits, fitted.chosen, fitted.tokens, [name for _, name in found]),
            messages=fitted.messages,
            retrieval_ms=round(retrieval_ms, 3),
        )
        generation = await self.generation.generate(
            principal, fitted.messages, params, model=generator.name, operation="chat"
        )
        return AnswerRun(model=generation.model, generation=generation, grounded=grounded)
