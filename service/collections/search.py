"""Search: nearest vectors, by text through the collection's model, by keywords, or both fused.

The search path has its own rules (strategies, the response budget, text embedding and fusion);
it reaches the collection through CollectionAccess (with the cached row) like every other part.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from service.auth.principal import TenantPrincipal
from service.collections import vector_store
from service.collections.access import CollectionAccess, StaleCollection, Usage
from service.collections.filters import compile_filter
from service.collections.models import (
    BatchSearchResult,
    IndexStatus,
    SearchHit,
    SearchMode,
    SearchRequest,
    SearchResult,
)
from service.collections.store import CollectionRow
from service.collections.vectors import as_list, check_vectors, encoder, problem_at
from service.config import CollectionsSettings, DocumentsSettings
from service.db import TenantConnection
from service.db.connections import set_local
from service.embeddings.service import EmbeddingService
from service.errors import Conflict, InvalidRequest

# A float in a JSON response ("-0.12345678," and the like); a hit's id, score and punctuation.
_JSON_BYTES_PER_FLOAT = 12
_HIT_OVERHEAD_BYTES = 48


class _Fixed(dict[str, str]):
    """The settings of a single-statement connection: they cannot change within the search."""


class _ResponseBudget:
    """The bytes a search response is growing to; refuses past collections.max_search_response_bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def add(self, hit_bytes: int) -> None:
        self.used += hit_bytes + _HIT_OVERHEAD_BYTES
        if self.used > self.limit:
            raise InvalidRequest(
                f"The response would exceed {self.limit} bytes (collections.max_search_response_bytes); "
                "ask for a smaller top_k, fewer queries, or include_metadata/include_vector false.",
                code="response_too_large",
                extra={"limit": "max_search_response_bytes", "value": self.limit},
            )

    @property
    def mib(self) -> int:
        """Whole MiB of the response beyond its first, for the token bucket (small answers cost
        what a search always cost)."""
        return self.used // (1024 * 1024)


def check_query(request: SearchRequest, where: str) -> None:
    """Which of vector and text each mode takes (400 naming the field)."""
    if request.mode is SearchMode.VECTOR:
        if (request.vector is None) == (request.text is None):
            raise problem_at(f"{where}vector", "give exactly one of 'vector' and 'text'")
    elif request.text is None:
        raise problem_at(f"{where}text", f"is required in {request.mode.value} mode")
    elif request.mode is SearchMode.KEYWORD and request.vector is not None:
        raise problem_at(f"{where}vector", "keyword mode ranks by text only; leave 'vector' out")


def _fuse(rankings: list[tuple[float, list[Any]]], k: int, top_k: int) -> list[tuple[Any, float]]:
    """Reciprocal rank fusion: score(id) = sum over rankings of weight / (k + rank), rank from 1."""
    scores: dict[str, float] = {}
    records: dict[str, Any] = {}
    for weight, ranking in rankings:
        for rank, record in enumerate(ranking, start=1):
            scores[record["id"]] = scores.get(record["id"], 0.0) + weight / (k + rank)
            records.setdefault(record["id"], record)
    best = sorted(scores, key=lambda i: (-scores[i], i))[:top_k]
    return [(records[i], scores[i]) for i in best]


class SearchService:
    def __init__(
        self,
        access: CollectionAccess,
        settings: CollectionsSettings,
        documents: DocumentsSettings,
        embeddings: EmbeddingService | None,
        usage: Usage,
    ) -> None:
        self.access = access
        self.settings = settings
        self.documents = documents
        self.embeddings = embeddings
        self.usage = usage

    def _search_settings(self, request: SearchRequest) -> dict[str, str]:
        return {
            "hnsw.ef_search": str(max(request.ef_search or self.settings.default_ef_search, request.top_k)),
            "hnsw.iterative_scan": "off",
            # asyncpg prepares statements; a generic plan would not know LIMIT $2 (nor the filter's
            # values) and would sort the whole table instead of walking the HNSW index.
            "plan_cache_mode": "force_custom_plan",
        }

    async def _embed_texts(
        self, principal: TenantPrincipal, name: str, queries: list[SearchRequest], where: Callable[[int], str]
    ) -> tuple[dict[int, Any], int | None]:
        """The query vectors of queries that give text for the vector half, embedded with the
        collection's model (outside any transaction: a model call may queue), and the collection's
        id they were made for."""
        wanted = [i for i, q in enumerate(queries) if q.text is not None and q.vector is None]
        wanted = [i for i in wanted if queries[i].mode is not SearchMode.KEYWORD]
        if not wanted:
            return {}, None
        row = await self.access.text_collection(principal, name)
        assert self.embeddings is not None and row.embedding_model is not None  # a text collection
        embedded = await self.embeddings.embed(
            principal,
            [queries[i].text or "" for i in wanted],
            row.embedding_model,
            field=lambda j: f"{where(wanted[j])}text",
        )
        return {i: embedded.vectors[j] for j, i in enumerate(wanted)}, row.id

    async def search(self, principal: TenantPrincipal, name: str, request: SearchRequest) -> SearchResult:
        started = time.perf_counter()
        tenant_id = principal.tenant_id
        check_query(request, "")
        await self.usage.charge(tenant_id, "search", 1)
        embedded, made_for = await self._embed_texts(principal, name, [request], lambda _: "")
        settings = self._search_settings(request)
        # The common search (by vector, no filter) is one statement with these settings: no
        # transaction needed around it (CollectionAccess.open(single_statement=True)).
        single = request.mode is SearchMode.VECTOR and not request.filter
        for cached in (True, False):
            budget = _ResponseBudget(self.settings.max_search_response_bytes)
            try:
                async with self.access.open(
                    principal, name, settings, cached=cached, single_statement=single
                ) as (conn, row):
                    self._same_collection(row, made_for)
                    hits, strategy = await self._search_one(
                        conn,
                        row,
                        request,
                        embedded.get(0),
                        "",
                        (_Fixed if single else dict)(settings),
                        budget,
                    )
                break
            except StaleCollection:
                continue  # dropped since it was cached (perhaps created again): look it up afresh
        self.usage.record(tenant_id, "searches", 1)
        await self.usage.charge(tenant_id, "search_mib", budget.mib)
        return SearchResult(
            results=hits, took_ms=round((time.perf_counter() - started) * 1000, 3), strategy=strategy
        )

    async def search_batch(
        self, principal: TenantPrincipal, name: str, queries: list[SearchRequest]
    ) -> BatchSearchResult:
        started = time.perf_counter()
        tenant_id = principal.tenant_id
        for i, query in enumerate(queries):
            check_query(query, f"queries[{i}].")
        await self.usage.charge(tenant_id, "search", len(queries))
        embedded, made_for = await self._embed_texts(principal, name, queries, lambda i: f"queries[{i}].")
        settings = self._search_settings(queries[0])
        for cached in (True, False):
            results = []
            budget = _ResponseBudget(self.settings.max_search_response_bytes)
            applied = dict(settings)
            try:
                async with self.access.open(principal, name, settings, cached=cached) as (conn, row):
                    self._same_collection(row, made_for)
                    for i, query in enumerate(queries):
                        hits, _ = await self._search_one(
                            conn, row, query, embedded.get(i), f"queries[{i}].", applied, budget
                        )
                        results.append(hits)
                break
            except StaleCollection:
                continue  # dropped since it was cached (perhaps created again): look it up afresh
        self.usage.record(tenant_id, "searches", len(queries))
        await self.usage.charge(tenant_id, "search_mib", budget.mib)
        return BatchSearchResult(results=results, took_ms=round((time.perf_counter() - started) * 1000, 3))

    @staticmethod
    def _same_collection(row: CollectionRow, made_for: int | None) -> None:
        if made_for is not None and row.id != made_for:
            raise Conflict(
                f"Collection '{row.name}' was deleted and created again during this search; search again."
            )

    @staticmethod
    async def _apply(conn: TenantConnection, wanted: dict[str, str], applied: dict[str, str]) -> None:
        """Set the transaction-local parameters in `wanted` that differ from `applied` (one round trip)."""
        changed = {k: v for k, v in wanted.items() if applied.get(k) != v}
        if changed and isinstance(applied, _Fixed):
            raise RuntimeError(
                f"a single-statement search was opened without the settings it needs: {changed}"
            )
        if changed:
            await set_local(conn, changed)
            applied.update(changed)

    async def _search_one(
        self,
        conn: TenantConnection,
        row: CollectionRow,
        request: SearchRequest,
        embedded: Any,
        field: str,
        applied: dict[str, str],
        budget: _ResponseBudget,
    ) -> tuple[list[SearchHit], str]:
        if request.mode is not SearchMode.VECTOR and not row.has_text:
            raise problem_at(
                f"{field}mode",
                f"{request.mode.value} search ranks the texts of documents; collection '{row.name}' is not "
                "bound to an embedding model and has none",
                code="not_a_text_collection",
            )
        where = compile_filter(request.filter) if request.filter else None
        options = {"include_metadata": request.include_metadata, "include_vector": request.include_vector}
        scored: list[tuple[Any, float]]
        if request.mode is SearchMode.KEYWORD:
            assert request.text is not None
            records = await vector_store.keyword_ranked(
                conn, row, request.text, top_k=request.top_k, where=where, **options
            )
            scored, strategy = [(r, float(r["score"])) for r in records], "keyword"
        else:
            vector = request.vector if embedded is None else embedded
            query = check_vectors(row, [vector], lambda _: f"{field}vector")[0]
            strategy = await self._choose_strategy(conn, row, request)
            wanted = self._search_settings(request)
            if strategy == "hnsw_filtered":
                wanted["hnsw.iterative_scan"] = "relaxed_order"
            hybrid = request.mode is SearchMode.HYBRID
            candidates = max(request.top_k, self.documents.hybrid_candidates) if hybrid else request.top_k
            if hybrid:
                wanted["hnsw.ef_search"] = str(max(int(wanted["hnsw.ef_search"]), candidates))
            await self._apply(conn, wanted, applied)
            records = await vector_store.nearest(
                conn,
                row,
                encoder(row)(query),
                top_k=candidates,
                where=where,
                exact=strategy == "exact",
                **options,
            )
            if hybrid:
                assert request.text is not None
                keyword = await vector_store.keyword_ranked(
                    conn, row, request.text, top_k=candidates, where=where, **options
                )
                scored = _fuse(
                    [
                        (self.documents.hybrid_vector_weight, records),
                        (self.documents.hybrid_keyword_weight, keyword),
                    ],
                    self.documents.rrf_k,
                    request.top_k,
                )
                strategy = f"hybrid+{strategy}"
            else:
                scored = [(r, float(r["score"])) for r in records]
        return self._hits(row, request, scored, budget), strategy

    def _hits(
        self,
        row: CollectionRow,
        request: SearchRequest,
        scored: list[tuple[Any, float]],
        budget: _ResponseBudget,
    ) -> list[SearchHit]:
        hits = []
        for record, score in scored:
            if request.threshold is not None and not score >= request.threshold:
                continue
            text = record["text"] if row.has_text else None
            # Counted before the hit is built: a request never holds more than the limit.
            budget.add(
                len(record["id"])
                + (len(record["metadata"]) if request.include_metadata else 0)
                + (row.dimension * _JSON_BYTES_PER_FLOAT if request.include_vector else 0)
                + (len(text) if text else 0)
            )
            hits.append(
                SearchHit(
                    id=record["id"],
                    score=score,
                    metadata=msgspec.json.decode(record["metadata"]) if request.include_metadata else None,
                    vector=as_list(record["embedding"]) if request.include_vector else None,
                    document_id=record["document_id"] if row.has_text else None,
                    chunk_index=record["chunk_index"] if row.has_text else None,
                    text=text,
                )
            )
        return hits

    async def _choose_strategy(
        self, conn: TenantConnection, row: CollectionRow, request: SearchRequest
    ) -> str:
        """exact until the HNSW index is ready; then hnsw, or for a filter: exact when it matches
        fewer than filtered_exact_scan_limit vectors (fast, perfect recall), else hnsw_filtered."""
        if row.index_status != IndexStatus.READY:
            return "exact"
        if not request.filter:
            return "hnsw"
        limit = self.settings.filtered_exact_scan_limit
        matches = await vector_store.count_matches(conn, row, compile_filter(request.filter), up_to=limit)
        return "exact" if matches < limit else "hnsw_filtered"
