"""The semantic cache in front of grounded answers (store.py, migration 0006).

Keyed by tenant (row-level security), collection, the collection's data_version (any write moves
it on, so older answers never match again), and a digest of the chat model, the prompt template
and the retrieval and generation parameters; matched by the question's embedding (cosine >=
rag.cache_similarity). Only single questions are cached (a conversation's history changes the
answer). A hit charges the question's embedding and nothing else.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from service.collections.store import CollectionRow
from service.config import RagSettings
from service.db import Database
from service.inference.chat import GenerationParams
from service.metrics import RAG_CACHE_ENTRIES, RAG_CACHE_LOOKUPS, RAG_CACHE_STORED
from service.rag import store
from service.rag.models import Answer, AnswerRequest
from service.rag.prompt import cache_fields

log = logging.getLogger("vectorhive.rag")


@dataclass(frozen=True, slots=True)
class CacheSlot:
    """Where one answer is looked up and stored."""

    tenant_id: str
    collection_id: int
    data_version: int
    key: str
    embedding: np.ndarray[Any, Any]


class AnswerCache:
    def __init__(self, db: Database, settings: RagSettings) -> None:
        self.db = db
        self.settings = settings

    def slot(
        self,
        tenant_id: str,
        row: CollectionRow,
        model: str,
        request: AnswerRequest,
        params: GenerationParams,
        embedding: np.ndarray[Any, Any],
    ) -> CacheSlot:
        fields = cache_fields(
            chat_model=model,
            embedding_model=row.embedding_model,
            top_k=request.top_k or self.settings.top_k,
            mode=request.mode,
            filter=request.filter,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
        )
        key = hashlib.sha256(msgspec.json.encode(fields, order="sorted")).hexdigest()
        return CacheSlot(tenant_id, row.id, row.data_version, key, embedding)

    async def lookup(self, slot: CacheSlot) -> Answer | None:
        """The cached answer (marked cached), or None; counts the lookup's outcome."""
        async with self.db.tenant_transaction(slot.tenant_id) as conn:
            found = await store.lookup(
                conn,
                collection_id=slot.collection_id,
                data_version=slot.data_version,
                cache_key=slot.key,
                embedding=slot.embedding,
            )
            hit = found is not None and found[1] >= self.settings.cache_similarity
            if found is not None and hit:
                await store.record_hit(conn, found[0])
        if found is None or not hit:
            RAG_CACHE_LOOKUPS.labels("miss").inc()
            return None
        RAG_CACHE_LOOKUPS.labels("hit").inc()
        cached = msgspec.json.decode(found[2], type=Answer)
        return msgspec.structs.replace(cached, cached=True)

    async def remember(self, slot: CacheSlot, question: str, answer: Answer) -> None:
        """Store a finished answer. A failure to store is logged, never the request's failure."""
        if not answer.answer.strip():
            return
        try:
            async with self.db.tenant_transaction(slot.tenant_id) as conn:
                await store.insert(
                    conn,
                    collection_id=slot.collection_id,
                    data_version=slot.data_version,
                    cache_key=slot.key,
                    embedding=slot.embedding,
                    question=question,
                    answer_json=msgspec.json.encode(answer).decode(),
                    ttl_seconds=self.settings.cache_ttl_seconds,
                    max_entries=self.settings.cache_max_entries_per_tenant,
                )
        except Exception:
            log.warning("could not store an answer in the semantic cache", exc_info=True)
            return
        RAG_CACHE_STORED.inc()

    async def prune(self) -> None:
        """Periodic: expired and invalidated entries go; the entries gauge is refreshed."""
        async with self.db.transaction() as conn:
            RAG_CACHE_ENTRIES.set(await store.prune_and_count(conn))
