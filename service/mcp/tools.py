"""The MCP tools: each a thin call into the service behind the REST operation it mirrors.

There is no second implementation here: a tool decodes its arguments into the REST request struct
(see models.py) and calls the same service method the REST controller calls, with the caller's
Principal, so tenancy, collection scopes, quotas, token-bucket costs and usage metering are the
services' own. ADMIN-only REST functions (collections' creation and deletion, keys, tenants,
quotas, cluster) have no tool at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from service.auth.principal import TenantPrincipal
from service.collections.models import (
    Collection,
    CollectionPage,
    DeleteRequest,
    SearchResult,
    UpsertResult,
)
from service.collections.service import CollectionService
from service.documents.models import AddDocumentsResult, Document
from service.documents.service import DocumentService
from service.errors import InvalidRequest, NotFound
from service.mcp.models import (
    AddDocumentsArgs,
    AnswerArgs,
    CollectionArgs,
    ContextArgs,
    DeleteArgs,
    DeleteToolResult,
    GetDocumentsArgs,
    GetDocumentsResult,
    ListCollectionsArgs,
    SearchArgs,
    UpsertArgs,
)
from service.rag.answers import RagService
from service.rag.models import Answer, ContextResult


@dataclass(frozen=True, slots=True)
class Services:
    """The services tools call (built in create_app, like every provider)."""

    collections: CollectionService
    documents: DocumentService
    rag: RagService
    # generation.enabled: without a chat model, answer and context (which counts in the chat
    # model's tokens) could only fail, so they are not listed at all.
    generation: bool = True


Runner = Callable[[Services, TenantPrincipal, Any], Awaitable[msgspec.Struct]]


def json_schema(struct: type[Any]) -> dict[str, Any]:
    """msgspec's schema of a struct with the struct itself at the root ("type": "object", as MCP
    wants for inputSchema and outputSchema); the structs it refers to stay under $defs."""
    schema = msgspec.json.schema(struct)
    defs: dict[str, Any] = schema.get("$defs", {})
    ref = schema.get("$ref", "")
    if not ref.startswith("#/$defs/"):
        return schema
    root: dict[str, Any] = dict(defs[ref.removeprefix("#/$defs/")])
    # The root may refer to itself (none of ours do); keep every definition so that refs resolve.
    if defs:
        root["$defs"] = defs
    return root


@dataclass(frozen=True)
class Tool:
    name: str
    title: str
    description: str
    args: type[msgspec.Struct]
    result: type[msgspec.Struct]
    run: Runner
    mirrors: str  # the REST operation_id it is a thin twin of (same service call, same rules)
    writes: bool = False  # needs write access (see service.may_write)
    destructive: bool = False
    idempotent: bool = True
    # Runs one search of the collection: a session token's query (max_queries), as REST counts
    # searchCollection.
    query: bool = False
    needs_generation: bool = False  # listed and callable only while generation is enabled
    decoder: msgspec.json.Decoder[Any] = field(init=False, repr=False)
    input_schema: dict[str, Any] = field(init=False, repr=False)
    output_schema: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # strict: "5" is not 5, as for REST bodies (service/body.py).
        object.__setattr__(self, "decoder", msgspec.json.Decoder(self.args, strict=True))
        object.__setattr__(self, "input_schema", json_schema(self.args))
        object.__setattr__(self, "output_schema", json_schema(self.result))


# -- runners ---------------------------------------------------------------------------------------


async def _list_collections(s: Services, p: TenantPrincipal, a: ListCollectionsArgs) -> CollectionPage:
    return await s.collections.list_page(p, cursor=a.cursor, limit=a.limit)


async def _describe_collection(s: Services, p: TenantPrincipal, a: CollectionArgs) -> Collection:
    return await s.collections.get(p, a.collection)


async def _search(s: Services, p: TenantPrincipal, a: SearchArgs) -> SearchResult:
    # SearchArgs is a SearchRequest (a subclass): the service reads the fields it knows.
    return await s.collections.search(p, a.collection, a)


async def _upsert_vectors(s: Services, p: TenantPrincipal, a: UpsertArgs) -> UpsertResult:
    return await s.collections.upsert(p, a.collection, a)


async def _delete(s: Services, p: TenantPrincipal, a: DeleteArgs) -> DeleteToolResult:
    request = DeleteRequest(ids=a.ids, filter=a.filter)
    if a.dry_run:
        matched = await s.collections.count_matching(p, a.collection, request)
        return DeleteToolResult(dry_run=True, matched=matched, deleted=0)
    deleted = (await s.collections.delete_vectors(p, a.collection, request)).deleted
    return DeleteToolResult(dry_run=False, matched=deleted, deleted=deleted)


async def _get_documents(s: Services, p: TenantPrincipal, a: GetDocumentsArgs) -> GetDocumentsResult:
    if a.ids is None:
        page = await s.documents.list_page(p, a.collection, cursor=a.cursor, limit=a.limit)
        return GetDocumentsResult(listed=page.items, next_cursor=page.next_cursor)
    # The collection first: one outside the caller's reach fails the call as not found, whatever
    # the ids (the same answer as for a collection that does not exist).
    await s.collections.get(p, a.collection)
    documents: list[Document] = []
    not_found: list[str] = []
    for document_id in dict.fromkeys(a.ids):
        try:
            documents.append(await s.documents.get(p, a.collection, document_id))
        except NotFound:
            not_found.append(document_id)
    return GetDocumentsResult(documents=documents, not_found=not_found)


async def _answer(s: Services, p: TenantPrincipal, a: AnswerArgs) -> Answer:
    """POST /collections/{name}/answer without streaming: the same RagService calls as the REST
    handler (cache lookup, retrieval, admitted and charged generation, then the cache stored)."""
    if a.stream:
        # A tool result is one message; the REST route streams Server-Sent Events instead.
        raise InvalidRequest.field(
            "stream",
            "must be false for the answer tool",
            "The answer tool does not stream: leave 'stream' out or false (POST "
            "/api/v1/collections/{name}/answer streams).",
        )
    run = await s.rag.answer(p, a.collection, a)
    if run.cached is not None:
        return run.shown(run.cached)
    assert run.generation is not None
    # Cancelled with the request (a client that went away): Generation.events() stops the model
    # and meters what it generated, as for REST.
    text, finished = await run.generation.text()
    answer = run.answer(text, finished)
    await s.rag.remember(run, answer)
    return run.shown(answer)


async def _context(s: Services, p: TenantPrincipal, a: ContextArgs) -> ContextResult:
    return await s.rag.context(p, a.collection, a)


async def _add_documents(s: Services, p: TenantPrincipal, a: AddDocumentsArgs) -> AddDocumentsResult:
    return await s.documents.add(p, a.collection, a)


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool(
            name="list_collections",
            title="List collections",
            description=(
                "The collections this credential can see, with dimension, metric, vector count and "
                "index state, in name order. Pass next_cursor back as cursor for the next page."
            ),
            args=ListCollectionsArgs,
            result=CollectionPage,
            run=_list_collections,
            mirrors="listCollections",
        ),
        Tool(
            name="describe_collection",
            title="Describe a collection",
            description="One collection with live statistics (vector count, size, index state).",
            args=CollectionArgs,
            result=Collection,
            run=_describe_collection,
            mirrors="getCollection",
        ),
        Tool(
            name="search",
            title="Search a collection",
            description=(
                "Search a collection. By text (a collection bound to an embedding model, see "
                "describe_collection's embedding): mode vector (meaning), keyword (exact words; "
                'websearch syntax: words, "phrases", or, -not) or hybrid (both, fused); hits of '
                "documents carry document_id, chunk_index and the chunk's text. Or by vector (of the "
                "collection's dimension). Optionally under a metadata filter such as "
                '{"lang": "en"} or {"year": {"$gte": 2020}}. Higher score is better.'
            ),
            args=SearchArgs,
            result=SearchResult,
            run=_search,
            mirrors="searchCollection",
            query=True,
        ),
        Tool(
            name="get_documents",
            title="Get documents",
            description=(
                "Documents of a collection bound to an embedding model: with ids, those documents "
                "in full (text, metadata, chunk ranges) and the ids not found; without ids, a page "
                "of the collection's documents without their text."
            ),
            args=GetDocumentsArgs,
            result=GetDocumentsResult,
            run=_get_documents,
            mirrors="getDocument",
        ),
        Tool(
            name="answer",
            title="Answer a question",
            description=(
                "Answer a question (or the last user message of a conversation) from a text "
                "collection's documents: the best passages are retrieved (mode vector or hybrid, "
                "optional metadata filter), a chat model answers citing them as [1], [2], ...; "
                "citations map those numbers back to the document chunks. cached: true when the "
                "answer came from the semantic cache. Does not stream."
            ),
            args=AnswerArgs,
            result=Answer,
            run=_answer,
            mirrors="answerQuestion",
            # Not idempotent: a generation (unless cached) may word the answer differently.
            idempotent=False,
            query=True,
            needs_generation=True,
        ),
        Tool(
            name="context",
            title="Retrieve context",
            description=(
                "The passages an answer to the question would be given, best first, within a token "
                "budget (max_tokens, in the chat model's tokens): for a client with its own LLM. "
                "dropped counts retrieved passages that did not fit."
            ),
            args=ContextArgs,
            result=ContextResult,
            run=_context,
            mirrors="retrieveContext",
            query=True,
            needs_generation=True,
        ),
        Tool(
            name="add_documents",
            title="Add documents",
            description=(
                "Store documents (id, text, optional metadata) in a collection bound to an embedding "
                "model: each is split into chunks, embedded and made searchable by text. A document "
                "sent again replaces the old one whole. All or nothing."
            ),
            args=AddDocumentsArgs,
            result=AddDocumentsResult,
            run=_add_documents,
            mirrors="addDocuments",
            writes=True,
            destructive=True,  # a document with an existing id replaces it
        ),
        Tool(
            name="upsert_vectors",
            title="Insert or replace vectors",
            description=(
                "Insert vectors (id, vector, optional metadata) into a collection, replacing those "
                "whose id exists. All or nothing."
            ),
            args=UpsertArgs,
            result=UpsertResult,
            run=_upsert_vectors,
            mirrors="upsertVectors",
            writes=True,
            destructive=True,  # an existing id's vector and metadata are replaced
        ),
        Tool(
            name="delete",
            title="Delete vectors",
            description=(
                "Delete vectors of a collection by ids or by a metadata filter (exactly one). "
                "With dry_run true, count what would be deleted and delete nothing."
            ),
            args=DeleteArgs,
            result=DeleteToolResult,
            run=_delete,
            mirrors="deleteVectors",
            writes=True,
            destructive=True,
        ),
    )
}
