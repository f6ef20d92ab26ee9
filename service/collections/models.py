"""Request and response shapes of the collections API."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import msgspec

from service.auth.models import CollectionName
from service.collections.validation import VECTOR_ID_MAX_LENGTH, VECTOR_ID_PATTERN, VECTOR_ID_RULE
from service.collections.vector_codec import B64_DESCRIPTION
from service.pagination import Page

VectorId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=VECTOR_ID_MAX_LENGTH,
        pattern=VECTOR_ID_PATTERN,
        description=VECTOR_ID_RULE,
        extra={"rule": VECTOR_ID_RULE},
    ),
]
Metadata = dict[str, Any]


class Metric(StrEnum):
    COSINE = "cosine"
    L2 = "l2"
    INNER_PRODUCT = "inner_product"


class Storage(StrEnum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"


# pgvector's HNSW limits: 2,000 dimensions for vector, 4,000 for halfvec.
MAX_DIMENSION = {Storage.FLOAT32: 2000, Storage.FLOAT16: 4000}


class IndexStatus(StrEnum):
    NONE = "none"
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"


class IndexParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    m: Annotated[int, msgspec.Meta(ge=2, le=100)] = 16
    ef_construction: Annotated[int, msgspec.Meta(ge=4, le=1000)] = 64


TEXT_SEARCH_CONFIG_RULE = (
    "a PostgreSQL text search configuration: 1 to 63 of a-z and _ (english, simple, ...)"
)


class EmbeddingBinding(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Binds a collection to an embedding model: it then stores documents (split into chunks that
    the model embeds) and answers searches by text. Chunk sizes are in the model's own tokens
    (special tokens included); by default a chunk fills the model's window."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    chunk_tokens: Annotated[int, msgspec.Meta(ge=8, le=32768)] | None = None
    chunk_overlap: Annotated[int, msgspec.Meta(ge=0, le=32767)] | None = None
    text_search_config: (
        Annotated[str, msgspec.Meta(pattern=r"^[a-z_]{1,63}$", extra={"rule": TEXT_SEARCH_CONFIG_RULE})]
        | None
    ) = None


class EmbeddingState(msgspec.Struct, kw_only=True):
    model: str
    chunk_tokens: int
    chunk_overlap: int
    text_search_config: str


class CreateCollectionRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: CollectionName
    # The limit depends on storage (MAX_DIMENSION), checked by the service so that the error can
    # name the limit that applies; the schema states the largest.
    dimension: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1,
                description="At most 2,000 for float32 storage, 4,000 for float16. Required unless "
                "`embedding` names a model, whose dimension it then must equal.",
                extra_json_schema={"maximum": 4000},
            ),
        ]
        | None
    ) = None
    metric: Metric = Metric.COSINE
    index: IndexParams = msgspec.field(default_factory=IndexParams)
    storage: Storage = Storage.FLOAT32
    description: Annotated[str, msgspec.Meta(max_length=1000)] | None = None
    embedding: EmbeddingBinding | None = None


class IndexState(msgspec.Struct, kw_only=True):
    """status none: searches scan exactly until the collection reaches build_threshold vectors;
    building: the HNSW index is being built in the background (searches still exact);
    ready: searches use the index; failed: see error (searches stay exact)."""

    status: IndexStatus
    m: int
    ef_construction: int
    build_threshold: int
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None


class Collection(msgspec.Struct, kw_only=True):
    name: str
    qualified_name: str
    dimension: int
    metric: Metric
    storage: Storage
    index: IndexState
    vector_count: int
    size_bytes: int
    description: str | None
    created_at: datetime
    embedding: EmbeddingState | None = None


class CollectionPage(Page[Collection]):
    # Said again: Litestar's schema does not resolve the inherited list[T].
    items: list[Collection]


class VectorItem(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: VectorId
    # Exactly one of vector and vector_b64 (service/collections/vector_codec.py).
    vector: list[float] | None = None
    vector_b64: Annotated[str, msgspec.Meta(description=B64_DESCRIPTION)] | None = None
    metadata: Metadata | None = None


class UpsertRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    vectors: Annotated[list[VectorItem], msgspec.Meta(min_length=1)]


class UpsertResult(msgspec.Struct, kw_only=True):
    upserted: int


class VectorRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    metadata: Metadata
    vector: list[float] | None = None


class VectorPage(Page[VectorRecord]):
    # Said again: Litestar's schema does not resolve the inherited list[T].
    items: list[VectorRecord]


class DeleteRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Exactly one of ids and filter."""

    ids: Annotated[list[VectorId], msgspec.Meta(min_length=1, max_length=10_000)] | None = None
    filter: dict[str, Any] | None = None


class DeleteResult(msgspec.Struct, kw_only=True):
    deleted: int


class SearchMode(StrEnum):
    VECTOR = "vector"
    HYBRID = "hybrid"
    KEYWORD = "keyword"


class SearchRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Give `vector`, or `text` on a collection bound to a model (the text is embedded with it).
    mode vector: nearest vectors; keyword: full-text ranking of the chunks' text
    (websearch_to_tsquery syntax: words, "phrases", or, -not); hybrid: both rankings fused by
    reciprocal rank fusion (score = sum of weight / (documents.rrf_k + rank)); `text` is then
    required and `vector`, if given, replaces the embedded text for the vector half."""

    vector: list[float] | None = None
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=32768)] | None = None
    mode: SearchMode = SearchMode.VECTOR
    top_k: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    threshold: float | None = None
    filter: dict[str, Any] | None = None
    include_vector: bool = False
    include_metadata: bool = True
    ef_search: Annotated[int, msgspec.Meta(ge=1, le=1000)] | None = None


class SearchHit(msgspec.Struct, kw_only=True, omit_defaults=True):
    """document_id, chunk_index and text: for a chunk of a document (collections bound to a model)."""

    id: str
    score: float
    metadata: Metadata | None = None
    vector: list[float] | None = None
    document_id: str | None = None
    chunk_index: int | None = None
    text: str | None = None


class SearchResult(msgspec.Struct, kw_only=True):
    """score: higher is better for every metric (cosine similarity, inner product, negative L2
    distance). strategy: how it was answered: exact (scan), hnsw, or hnsw_filtered (iterative
    index scan with the filter); keyword (full-text index) or hybrid+<the vector half's strategy>.
    In keyword mode the score is PostgreSQL's ts_rank_cd, in hybrid mode the fused RRF score."""

    results: list[SearchHit]
    took_ms: float
    strategy: str


class BatchSearchRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    queries: Annotated[list[SearchRequest], msgspec.Meta(min_length=1, max_length=100)]


class BatchSearchResult(msgspec.Struct, kw_only=True):
    results: list[list[SearchHit]]
    took_ms: float
