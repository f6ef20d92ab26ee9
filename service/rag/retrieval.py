"""Retrieval for grounded answers: the question embedded with the collection's own model, the
collection searched (CollectionService: the tenant's and the caller's scope apply), the hits
numbered as passages; and POST /collections/{name}/context, the passages that fit a token budget.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from service.auth.principal import TenantPrincipal
from service.collections.models import SearchHit, SearchMode, SearchRequest
from service.collections.service import CollectionService
from service.collections.store import CollectionRow
from service.config import RagSettings
from service.embeddings.service import EmbeddingService
from service.inference.generators import GeneratorRegistry
from service.rag.models import ContextRequest, ContextResult, Passage


def passages(
    hits: list[SearchHit], fitted_count: int, tokens: list[int], collections: list[str]
) -> list[Passage]:
    """The first fitted_count hits, numbered from 1; collections: the collection each hit came from."""
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


class Retriever:
    def __init__(
        self,
        collections: CollectionService,
        embeddings: EmbeddingService,
        generators: GeneratorRegistry,
        settings: RagSettings,
    ) -> None:
        self.collections = collections
        self.embeddings = embeddings
        self.generators = generators
        self.settings = settings

    async def question_vector(
        self, principal: TenantPrincipal, row: CollectionRow, question: str, field: str
    ) -> np.ndarray[Any, Any]:
        """field: where the question stands in the request (for a 400 about its length)."""
        embedded = await self.embeddings.embed(
            principal, [question], row.embedding_model, field=lambda _: field
        )
        vector: np.ndarray[Any, Any] = embedded.vectors[0]
        return vector

    async def retrieve(
        self,
        principal: TenantPrincipal,
        name: str,
        question: str,
        vector: np.ndarray[Any, Any],
        *,
        top_k: int | None,
        filter: dict[str, Any] | None,
        mode: str,
    ) -> tuple[list[SearchHit], float]:
        """The collection's hits for the question, and how long the search took (ms)."""
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

    async def context(self, principal: TenantPrincipal, name: str, request: ContextRequest) -> ContextResult:
        """The passages for a question that fit request.max_tokens of the chat model's tokens."""
        row = await self.collections.text_collection(principal, name)
        generator = self.generators.generator(request.model)
        vector = await self.question_vector(principal, row, request.question, "question")
        hits, retrieval_ms = await self.retrieve(
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
        found = passages(hits, len(chosen), chosen, [name] * len(chosen))
        return ContextResult(
            passages=found,
            total_tokens=used,
            dropped=len(hits) - len(found),
            model=generator.name,
            retrieval_ms=retrieval_ms,
        )
