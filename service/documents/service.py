"""Documents: split into chunks in the model's tokens, embedded, and stored all or nothing.

The model runs before the transaction opens (it may queue behind other requests); the write
itself is one tenant transaction on the collection (CollectionAccess), so a request either stores
every document with all its chunks (replacing earlier versions whole) or changes nothing.
"""

from __future__ import annotations

import logging

import msgspec

from service.auth.principal import TenantPrincipal
from service.collections.service import CollectionService
from service.collections.store import CollectionRow
from service.collections.vectors import check_vectors, encoder, metadata_as_json, problem_at
from service.config import DocumentsSettings
from service.documents import store
from service.documents.chunking import Chunk, split_text
from service.documents.models import (
    AddDocumentsRequest,
    AddDocumentsResult,
    ChunkInfo,
    Document,
    DocumentPage,
    DocumentSummary,
)
from service.embeddings.service import EmbeddingService
from service.errors import Conflict, NotFound
from service.pagination import decode_cursor, split_page

log = logging.getLogger("vectorhive.documents")


class DocumentService:
    def __init__(
        self, collections: CollectionService, embeddings: EmbeddingService, settings: DocumentsSettings
    ) -> None:
        self.access = collections.access
        self.vectors = collections.vectors
        self.max_metadata_bytes = collections.settings.max_metadata_bytes
        self.embeddings = embeddings
        self.settings = settings

    def _check(self, request: AddDocumentsRequest) -> list[str]:
        """400 for what the schema cannot say; the documents' metadata as JSON."""
        documents = request.documents
        if len(documents) > self.settings.max_documents_per_request:
            raise problem_at(
                "documents",
                f"{len(documents)} documents; at most {self.settings.max_documents_per_request} per request",
            )
        metadata_json = metadata_as_json(
            [(d.id, d.metadata) for d in documents], "documents", self.max_metadata_bytes
        )
        self.embeddings.check_texts(
            [d.text for d in documents],
            lambda i: f"documents[{i}].text",
            max_bytes=self.settings.max_document_bytes,
        )
        return metadata_json

    async def _split(self, row: CollectionRow, texts: list[str]) -> list[list[Chunk]]:
        assert (
            row.embedding_model is not None and row.chunk_tokens is not None and row.chunk_overlap is not None
        )
        size, overlap = row.chunk_tokens, row.chunk_overlap
        model = self.embeddings.model(row.embedding_model)
        chunked = await model.with_tokenizer(
            lambda count: [split_text(text, count, size=size, overlap=overlap) for text in texts]
        )
        total = sum(len(c) for c in chunked)
        if total > self.settings.max_chunks_per_request:
            raise problem_at(
                "documents",
                f"the documents make {total} chunks of at most {size} tokens; at most "
                f"{self.settings.max_chunks_per_request} per request (documents.max_chunks_per_request): "
                "send fewer or shorter documents per request",
            )
        return chunked

    async def add(
        self, principal: TenantPrincipal, name: str, request: AddDocumentsRequest
    ) -> AddDocumentsResult:
        tenant_id = principal.tenant_id
        metadata_json = self._check(request)
        row = await self.access.text_collection(principal, name)
        documents = request.documents
        chunked = await self._split(row, [d.text for d in documents])
        places = [(i, chunk) for i, chunks in enumerate(chunked) for chunk in chunks]
        texts = [documents[i].text[chunk.start : chunk.end] for i, chunk in places]
        assert row.embedding_model is not None
        embedded = await self.embeddings.embed(
            principal,
            texts,
            row.embedding_model,
            field=lambda j: f"documents[{places[j][0]}].text",
            internal=True,
        )
        await self.vectors.charge_upsert(tenant_id, len(texts))
        encode = encoder(row)
        vectors = check_vectors(row, embedded.vectors, lambda j: f"documents[{places[j][0]}].text")
        records = [
            (
                store.chunk_id(documents[i].id, chunk.index),
                encode(vectors[j]),
                metadata_json[i],
                documents[i].id,
                chunk.index,
                chunk.start,
                chunk.end,
                texts[j],
            )
            for j, (i, chunk) in enumerate(places)
        ]
        async with self.access.open(principal, name) as (conn, current):
            if current.id != row.id or current.embedding_model != row.embedding_model:
                raise Conflict(
                    f"Collection '{name}' was deleted and created again meanwhile; send the documents again."
                )
            await self.vectors.check_storage(
                conn,
                tenant_id,
                current,
                [r[0] for r in records],
                [metadata_json[i] for i, _ in places],
                extra=sum(len(d.text.encode()) * 2 for d in documents),  # the text, whole and in chunks
            )
            removed, added = await store.replace(
                conn, current, [(d.id, d.text, metadata_json[i]) for i, d in enumerate(documents)], records
            )
            updated = await self.vectors.count_write(conn, current, added - removed)
        self.vectors.written(tenant_id, updated, added)
        log.info(
            "documents stored",
            extra={
                "tenant_id": tenant_id,
                "collection_id": row.id,
                "documents": len(documents),
                "chunks": added,
            },
        )
        return AddDocumentsResult(
            documents=len(documents), chunks=added, tokens=embedded.total_tokens, replaced_chunks=removed
        )

    async def get(self, principal: TenantPrincipal, name: str, document_id: str) -> Document:
        async with self.access.open(principal, name) as (conn, row):
            found = await store.get(conn, row, document_id) if row.has_text else None
        if found is None:
            raise NotFound(f"Document '{document_id}' does not exist in collection '{name}'.")
        document, chunks = found
        return Document(
            id=document["id"],
            text=document["text"],
            metadata=msgspec.json.decode(document["metadata"]),
            chunks=[
                ChunkInfo(id=c["id"], index=c["chunk_index"], start=c["char_start"], end=c["char_end"])
                for c in chunks
            ],
            updated_at=document["updated_at"],
        )

    async def list_page(
        self, principal: TenantPrincipal, name: str, *, cursor: str | None, limit: int
    ) -> DocumentPage:
        async with self.access.open(principal, name) as (conn, row):
            records = (
                await store.list_page(conn, row, after=decode_cursor(cursor), limit=limit + 1)
                if row.has_text
                else []
            )
        records, next_cursor = split_page(records, limit, lambda r: str(r["id"]))
        return DocumentPage(
            items=[
                DocumentSummary(
                    id=r["id"],
                    metadata=msgspec.json.decode(r["metadata"]),
                    characters=r["characters"],
                    chunks=r["chunks"],
                    updated_at=r["updated_at"],
                )
                for r in records
            ],
            next_cursor=next_cursor,
        )

    async def delete(self, principal: TenantPrincipal, name: str, document_id: str) -> None:
        tenant_id = principal.tenant_id
        async with self.access.open(principal, name) as (conn, row):
            chunks = await store.delete(conn, row, document_id) if row.has_text else None
            if chunks is None:
                raise NotFound(f"Document '{document_id}' does not exist in collection '{name}'.")
            if chunks:
                await self.vectors.count_write(conn, row, -chunks)
        self.vectors.deleted(tenant_id, chunks)
