"""Collections of a tenant: create, list, describe, delete; and the feature's one entry point.

CollectionService is what the app wires: it owns the collection parts, each a service of its
own on the same CollectionAccess (the tenant transaction on a collection and its row cache):
`vectors` (service.collections.vectors) and `searches` (service.collections.search). The tenant
always comes from the TenantPrincipal.
"""

from __future__ import annotations

import logging

from service.auth.models import COLLECTION_NAME_RULE, is_collection_name
from service.auth.principal import TenantPrincipal
from service.collections import store
from service.collections.access import (
    CollectionAccess,
    Usage,
    collection_not_found,
    missing_table_is_not_found,
)
from service.collections.indexer import IndexBuilder
from service.collections.models import (
    MAX_DIMENSION,
    Collection,
    CollectionPage,
    CreateCollectionRequest,
    DeleteRequest,
    DeleteResult,
    EmbeddingState,
    IndexState,
    SearchRequest,
    SearchResult,
    UpsertRequest,
    UpsertResult,
)
from service.collections.search import SearchService
from service.collections.store import CollectionRow, TextBinding
from service.collections.vectors import VectorService, problem_at
from service.config import CollectionsSettings, DocumentsSettings
from service.db import Database
from service.db.notify import NotificationHub
from service.embeddings.service import EmbeddingService
from service.errors import Conflict, InvalidRequest
from service.pagination import decode_cursor, split_page
from service.quota.service import QuotaService
from service.quota.usage import UsageMeter

log = logging.getLogger("vectorhive.collections")


class CollectionService:
    def __init__(
        self,
        db: Database,
        settings: CollectionsSettings,
        indexer: IndexBuilder,
        *,
        quotas: QuotaService | None = None,
        meter: UsageMeter | None = None,
        embeddings: EmbeddingService | None = None,
        documents: DocumentsSettings | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.indexer = indexer
        self.quotas = quotas
        self.embeddings = embeddings
        self.documents = documents or DocumentsSettings()
        self.access = CollectionAccess(db, settings)
        usage = Usage(quotas, meter)
        self.vectors = VectorService(self.access, settings, indexer, usage)
        self.searches = SearchService(self.access, settings, self.documents, embeddings, usage)

    def attach(self, hub: NotificationHub) -> None:
        """Cached collection rows follow changes made by any process (see CollectionAccess.attach)."""
        self.access.attach(hub)

    # -- for other features (RAG, sessions, MCP): the parts' operations they use --------------------

    async def text_collection(self, principal: TenantPrincipal, name: str) -> CollectionRow:
        """The collection, which must be bound to an embedding model (400 otherwise)."""
        return await self.access.text_collection(principal, name)

    async def search(self, principal: TenantPrincipal, name: str, request: SearchRequest) -> SearchResult:
        return await self.searches.search(principal, name, request)

    async def upsert(self, principal: TenantPrincipal, name: str, request: UpsertRequest) -> UpsertResult:
        return await self.vectors.upsert(principal, name, request)

    async def delete_vectors(
        self, principal: TenantPrincipal, name: str, request: DeleteRequest
    ) -> DeleteResult:
        return await self.vectors.delete(principal, name, request)

    async def count_matching(self, principal: TenantPrincipal, name: str, request: DeleteRequest) -> int:
        """How many vectors delete_vectors(request) would delete now (MCP's delete with dry_run)."""
        return await self.vectors.count_matching(principal, name, request)

    # -- collections -------------------------------------------------------------------------------

    def _to_model(self, row: CollectionRow, size_bytes: int) -> Collection:
        return Collection(
            name=row.name,
            qualified_name=f"{row.tenant_id}:{row.name}",
            dimension=row.dimension,
            metric=row.metric,
            storage=row.storage,
            index=IndexState(
                status=row.index_status,
                m=row.hnsw_m,
                ef_construction=row.hnsw_ef_construction,
                build_threshold=self.settings.index_threshold,
                started_at=row.index_started_at,
                finished_at=row.index_finished_at,
                error=row.index_error,
            ),
            vector_count=row.vector_count,
            size_bytes=size_bytes,
            description=row.description,
            created_at=row.created_at,
            embedding=EmbeddingState(
                model=row.embedding_model,
                chunk_tokens=row.chunk_tokens or 0,
                chunk_overlap=row.chunk_overlap or 0,
                text_search_config=row.text_search_config or "",
            )
            if row.embedding_model is not None
            else None,
        )

    def _text_binding(self, request: CreateCollectionRequest) -> tuple[int, TextBinding | None]:
        """The collection's dimension, and its binding to a model if it names one."""
        binding = request.embedding
        if binding is None:
            if request.dimension is None:
                # Worded as the schema's own "required" errors (a plain collection must give it).
                raise InvalidRequest.field("dimension", "is required", "dimension is required")
            return request.dimension, None
        if self.embeddings is None:
            raise InvalidRequest("This server has no embedding models.", code="embeddings_disabled")
        model = self.embeddings.describe(binding.model)
        if request.dimension is not None and request.dimension != model.dimension:
            raise problem_at(
                "dimension",
                f"{request.dimension} does not match model '{model.name}', which makes {model.dimension}-d "
                "vectors (omit dimension to take the model's)",
            )
        chunk_tokens = binding.chunk_tokens or model.max_tokens
        if chunk_tokens > model.max_tokens:
            raise problem_at(
                "embedding.chunk_tokens",
                f"{chunk_tokens} exceeds model '{model.name}''s window of {model.max_tokens} tokens",
            )
        overlap = binding.chunk_overlap if binding.chunk_overlap is not None else chunk_tokens // 8
        if overlap >= chunk_tokens // 2:
            raise problem_at(
                "embedding.chunk_overlap",
                f"{overlap} must be less than half of chunk_tokens ({chunk_tokens})",
            )
        return model.dimension, TextBinding(
            model=model.name,
            chunk_tokens=chunk_tokens,
            chunk_overlap=overlap,
            text_search_config=binding.text_search_config or self.documents.text_search_config,
        )

    async def create(self, principal: TenantPrincipal, request: CreateCollectionRequest) -> Collection:
        if not is_collection_name(request.name):
            raise problem_at("name", f"must be {COLLECTION_NAME_RULE}")
        dimension, text = self._text_binding(request)
        limit = MAX_DIMENSION[request.storage]
        if dimension > limit:
            raise problem_at(
                "dimension",
                f"{dimension} exceeds the HNSW limit of {limit} for {request.storage} storage",
            )
        if not principal.may_see_collection(request.name):
            raise InvalidRequest.field(
                "name",
                "outside the key's collections",
                f"This key is limited to other collections and cannot create '{request.name}'.",
            )
        async with self.db.transaction() as conn:
            if text is not None and not await store.text_search_config_exists(conn, text.text_search_config):
                raise problem_at(
                    "embedding.text_search_config",
                    f"'{text.text_search_config}' is not a text search configuration of this database "
                    "(english, simple, german, ...: see pg_ts_config)",
                )
            if self.quotas is not None:
                await self.quotas.check_collections(conn, principal.tenant_id, dimension)
            await self.db.ensure_tenant_role(conn, principal.tenant_id)
            row = await store.create(
                conn,
                tenant_role=self.db.tenant_role(principal.tenant_id),
                tenant_id=principal.tenant_id,
                name=request.name,
                text=text,
                dimension=dimension,
                metric=request.metric,
                storage=request.storage,
                m=request.index.m,
                ef_construction=request.index.ef_construction,
                description=request.description,
            )
            if row is None:
                raise Conflict(f"Collection '{request.name}' already exists.")
            size = (await store.sizes(conn, [row]))[row.id]
        log.info("collection created", extra={"tenant_id": principal.tenant_id, "collection_id": row.id})
        return self._to_model(row, size)

    async def get(self, principal: TenantPrincipal, name: str) -> Collection:
        async with self.access.open(principal, name) as (conn, row):
            return self._to_model(row, (await store.sizes(conn, [row]))[row.id])

    async def list_page(
        self, principal: TenantPrincipal, *, cursor: str | None, limit: int
    ) -> CollectionPage:
        only = sorted(principal.collections) if principal.collections is not None else None
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            rows = await store.list_page(conn, after=decode_cursor(cursor), limit=limit + 1, only=only)
            rows, next_cursor = split_page(rows, limit, lambda r: r.name)
            sizes = await store.sizes(conn, rows)
        return CollectionPage(items=[self._to_model(r, sizes[r.id]) for r in rows], next_cursor=next_cursor)

    async def delete(self, principal: TenantPrincipal, name: str) -> None:
        row = await self.access.lookup(principal, name)
        # An index build holds a lock DROP TABLE would wait for: stop it first.
        await self.indexer.cancel(row.id)
        async with missing_table_is_not_found(name), self.db.transaction() as conn:
            if not await store.lock_for_drop(conn, row):  # waits for running writes
                raise collection_not_found(name)
            await store.drop(conn, row)
        log.info("collection deleted", extra={"tenant_id": principal.tenant_id, "collection_id": row.id})
