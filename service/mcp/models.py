"""MCP tool arguments and results, and the OAuth protected resource metadata document.

A tool's arguments are the REST operation's own request struct plus the path's `collection`: the
structs below subclass the REST ones, so the tools' input JSON Schema, their validation and their
error messages are those of REST, and a new REST field (text search, for one) reaches the tool too.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from service.auth.models import CollectionName
from service.collections.models import DeleteRequest, SearchRequest, UpsertRequest
from service.documents.models import AddDocumentsRequest, Document, DocumentId, DocumentSummary
from service.rag.models import AnswerRequest, ContextRequest

Cursor = Annotated[str, msgspec.Meta(description="next_cursor of the previous page")]


class ListCollectionsArgs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000, description="Collections per page")] = 100
    cursor: Cursor | None = None


class CollectionArgs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    collection: CollectionName


class SearchArgs(SearchRequest, kw_only=True, forbid_unknown_fields=True):
    """POST /collections/{name}/search's body, with the collection."""

    collection: CollectionName


class UpsertArgs(UpsertRequest, kw_only=True, forbid_unknown_fields=True):
    """PUT /collections/{name}/vectors's body, with the collection."""

    collection: CollectionName


class DeleteArgs(DeleteRequest, kw_only=True, forbid_unknown_fields=True):
    """POST /collections/{name}/vectors/delete's body, with the collection and dry_run."""

    collection: CollectionName
    dry_run: Annotated[
        bool, msgspec.Meta(description="Count the vectors that would be deleted; delete nothing")
    ] = False


class DeleteToolResult(msgspec.Struct, kw_only=True):
    """matched: vectors the ids or filter select; deleted: vectors removed (0 on a dry run)."""

    dry_run: bool
    matched: int
    deleted: int


class AddDocumentsArgs(AddDocumentsRequest, kw_only=True, forbid_unknown_fields=True):
    """POST /collections/{name}/documents's body, with the collection."""

    collection: CollectionName


class AnswerArgs(AnswerRequest, kw_only=True, forbid_unknown_fields=True):
    """POST /collections/{name}/answer's body, with the collection. A tool answers once, so
    `stream` must stay false (the answer tool refuses true with a clear error)."""

    collection: CollectionName


class ContextArgs(ContextRequest, kw_only=True, forbid_unknown_fields=True):
    """POST /collections/{name}/context's body, with the collection."""

    collection: CollectionName


class GetDocumentsArgs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """ids: those documents in full (text, metadata, chunks); none: a page of the collection's
    documents without their text (pass next_cursor back as cursor)."""

    collection: CollectionName
    ids: Annotated[list[DocumentId], msgspec.Meta(min_length=1, max_length=100)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000, description="Documents per page")] = 100
    cursor: Cursor | None = None


class GetDocumentsResult(msgspec.Struct, kw_only=True):
    """With ids: `documents` (in the order asked) and `not_found` (ids the collection does not
    have). Without: `listed` and `next_cursor`."""

    documents: list[Document] = msgspec.field(default_factory=list)
    not_found: list[str] = msgspec.field(default_factory=list)
    listed: list[DocumentSummary] = msgspec.field(default_factory=list)
    next_cursor: str | None = None


class ProtectedResourceMetadata(msgspec.Struct, kw_only=True, omit_defaults=True):
    """RFC 9728 OAuth 2.0 protected resource metadata of the MCP endpoint."""

    resource: str
    bearer_methods_supported: list[str]
    resource_name: str
    authorization_servers: list[str] | None = None
