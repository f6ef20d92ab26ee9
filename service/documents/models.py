"""Request and response shapes of the documents API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from service.pagination import Page

DOCUMENT_ID_RULE = "1 to 200 characters, without '/' or control characters"
DocumentId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=200,
        pattern=r"^[^/\x00-\x1f]+$",
        description=DOCUMENT_ID_RULE,
        extra={"rule": DOCUMENT_ID_RULE},
    ),
]


class DocumentItem(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: DocumentId
    text: Annotated[str, msgspec.Meta(min_length=1)]
    metadata: dict[str, Any] | None = None


class AddDocumentsRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Documents to store (all or nothing). A document sent again replaces the old one and all
    of its chunks. Each chunk is stored as a vector with id `<document id>#<chunk index>` and the
    document's metadata."""

    documents: Annotated[list[DocumentItem], msgspec.Meta(min_length=1)]


class AddDocumentsResult(msgspec.Struct, kw_only=True):
    documents: int
    chunks: int
    tokens: int
    replaced_chunks: int


class ChunkInfo(msgspec.Struct, kw_only=True):
    """A chunk's vector id and its character range [start, end) in the document's text."""

    id: str
    index: int
    start: int
    end: int


class Document(msgspec.Struct, kw_only=True):
    id: str
    text: str
    metadata: dict[str, Any]
    chunks: list[ChunkInfo]
    updated_at: datetime


class DocumentSummary(msgspec.Struct, kw_only=True):
    id: str
    metadata: dict[str, Any]
    characters: int
    chunks: int
    updated_at: datetime


class DocumentPage(Page[DocumentSummary]):
    # Said again: Litestar's schema does not resolve the inherited list[T].
    items: list[DocumentSummary]
