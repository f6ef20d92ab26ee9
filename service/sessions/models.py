"""Request and response structs of /api/v1/sessions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from service.auth.models import CollectionName
from service.collections.models import SearchHit, SearchMode
from service.imports.models import Import, ImportRequest
from service.pagination import Page

Collections = Annotated[list[CollectionName], msgspec.Meta(min_length=1, max_length=100)]
MaxQueries = Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000)]
Seconds = Annotated[int, msgspec.Meta(ge=1, le=31_536_000)]
Mode = Literal["read_only"]


class S5Source(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An S5 vector database, loaded through the import pipeline into a temporary collection
    (s5-<hash of tenant, manifest and owner>, shared by the tenant's sessions of the same
    database) that is dropped when the last of them ends, expires or fails."""

    type: Literal["s5"]
    manifest_path: Annotated[str, msgspec.Meta(min_length=1, max_length=1024, pattern=r"^[^\x00-\x1f]+$")]
    user_address: Annotated[str, msgspec.Meta(pattern=r"^0[xX][0-9a-fA-F]{40}$")]
    encryption_key: Annotated[str, msgspec.Meta(max_length=100)] | None = None

    def as_import(self) -> ImportRequest:
        return ImportRequest(
            source="s5",
            manifest_path=self.manifest_path,
            user_address=self.user_address,
            encryption_key=self.encryption_key,
            create_collection=True,
        )


class CreateSessionRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Give `collections` (existing ones) or `source` (an S5 database to load). ttl_seconds:
    within sessions.min_ttl_seconds..max_ttl_seconds (default sessions.default_ttl_seconds).
    Sessions are read-only: mode is "read_only"."""

    collections: Collections | None = None
    source: S5Source | None = None
    ttl_seconds: Seconds | None = None
    mode: Mode = "read_only"
    max_queries: MaxQueries | None = None


class ExchangeDelegationRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Exchange a delegation token (once) for a session with the rights it carries."""

    delegation_token: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
    mode: Mode = "read_only"
    ttl_seconds: Seconds | None = None


class CreateDelegationRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """ttl_seconds: how long the token may wait to be exchanged (default
    sessions.delegation_default_ttl_seconds); session_ttl_seconds: the longest session it may be
    exchanged for (default sessions.default_ttl_seconds)."""

    collections: Collections
    ttl_seconds: Seconds | None = None
    session_ttl_seconds: Seconds | None = None
    mode: Mode = "read_only"
    max_queries: MaxQueries | None = None


class Delegation(msgspec.Struct, kw_only=True):
    """An EdDSA JWT (audience <issuer>:delegation), verifiable with GET /api/v1/sessions/keys."""

    delegation_token: str
    jti: str
    expires_at: datetime
    collections: list[str]
    session_ttl_seconds: int
    max_queries: int | None


class Session(msgspec.Struct, kw_only=True):
    """status: active (a session of existing collections) or, backed by S5, loading | ready |
    error (`load` has the import's progress and error code); ended once it has ended
    (end_reason deleted | expired | failed; an expired session not yet swept already shows
    ended/expired)."""

    session_id: str
    status: Literal["active", "loading", "ready", "error", "ended"]
    source: Literal["collections", "s5"]
    mode: Mode
    collections: list[str]
    parent_key_id: str | None
    max_queries: int | None
    queries_used: int
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    end_reason: Literal["deleted", "expired", "failed"] | None
    load: Import | None = None


class CreatedSession(Session, kw_only=True):
    """The only time `token` is shown: an EdDSA JWT (audience <issuer>:session), used as
    'Authorization: Bearer <token>' on the searches and reads of the session's collections."""

    token: str


class SessionPage(Page[Session]):
    # Said again: Litestar's schema does not resolve the inherited list[T] (it would document
    # items as plain objects, as it does for ImportPage).
    items: list[Session]


class SessionSearchRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Give `vector`, or `query` (text, on a collection bound to a model); mode as for a
    collection's search (vector | keyword | hybrid). collection: required when the session has
    several."""

    vector: list[float] | None = None
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=32768)] | None = None
    mode: SearchMode = SearchMode.VECTOR
    collection: CollectionName | None = None
    top_k: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    threshold: float | None = None
    filter: dict[str, Any] | None = None
    include_metadata: bool = True
    include_vector: bool = False


class SessionSearchResult(msgspec.Struct, kw_only=True):
    session_id: str
    collection: str
    results: list[SearchHit]
    took_ms: float
    strategy: str
    queries_used: int | None = None  # with max_queries: the count after this query


class JsonWebKey(msgspec.Struct, kw_only=True):
    kty: str
    crv: str
    x: str
    kid: str
    use: str
    alg: str


class JsonWebKeySet(msgspec.Struct, kw_only=True):
    """RFC 7517: every public key that still verifies tokens of this service."""

    keys: list[JsonWebKey]


class RotatedSigningKey(msgspec.Struct, kw_only=True):
    kid: str
