"""/api/v1/collections: thin handlers; the rules live in CollectionService and its parts
(`collections.vectors`, `collections.searches`)."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from service.auth.guards import requires
from service.auth.principal import Permission, TenantPrincipal
from service.collections.models import (
    BatchSearchRequest,
    BatchSearchResult,
    Collection,
    CollectionPage,
    CreateCollectionRequest,
    DeleteRequest,
    DeleteResult,
    SearchRequest,
    SearchResult,
    UpsertRequest,
    UpsertResult,
    VectorPage,
    VectorRecord,
)
from service.collections.service import CollectionService
from service.errors import AUTHENTICATED, problem_responses
from service.pagination import Cursor, PageLimit

Name = FromPath[str]
Service = NamedDependency[CollectionService]
Tenant = NamedDependency[TenantPrincipal]

READ = [requires(Permission.READ_ONLY)]
WRITE = [requires(Permission.READ_WRITE)]
MANAGE = [requires(Permission.ADMIN)]


class CollectionsController(Controller):
    """Collections of the caller's tenant. Another tenant's collections are simply not found."""

    path = "/api/v1/collections"
    tags = ["collections"]

    @post(
        "",
        operation_id="createCollection",
        guards=MANAGE,
        responses=problem_responses(*AUTHENTICATED, 409),
        summary="Create a collection (stored as tenant_id:name)",
    )
    async def create_collection(
        self, tenant: Tenant, collections: Service, data: JSONBody[CreateCollectionRequest]
    ) -> Collection:
        return await collections.create(tenant, data)

    @get(
        "",
        operation_id="listCollections",
        guards=READ,
        responses=problem_responses(*AUTHENTICATED),
        summary="List the tenant's collections",
    )
    async def list_collections(
        self, tenant: Tenant, collections: Service, limit: PageLimit = 100, cursor: Cursor = None
    ) -> CollectionPage:
        return await collections.list_page(tenant, cursor=cursor, limit=limit)

    @get(
        "/{name:str}",
        operation_id="getCollection",
        guards=READ,
        responses=problem_responses(*AUTHENTICATED, 404),
        summary="A collection with live statistics",
    )
    async def get_collection(self, tenant: Tenant, collections: Service, name: Name) -> Collection:
        return await collections.get(tenant, name)

    @delete(
        "/{name:str}",
        operation_id="deleteCollection",
        guards=MANAGE,
        responses=problem_responses(*AUTHENTICATED, 404),
        summary="Delete a collection and its storage",
    )
    async def delete_collection(self, tenant: Tenant, collections: Service, name: Name) -> None:
        await collections.delete(tenant, name)

    @put(
        "/{name:str}/vectors",
        operation_id="upsertVectors",
        guards=WRITE,
        responses=problem_responses(*AUTHENTICATED, 404),
        summary="Insert or replace vectors (all or nothing)",
    )
    async def upsert_vectors(
        self, tenant: Tenant, collections: Service, name: Name, data: JSONBody[UpsertRequest]
    ) -> UpsertResult:
        return await collections.vectors.upsert(tenant, name, data)

    @get(
        "/{name:str}/vectors",
        operation_id="scrollVectors",
        guards=READ,
        responses=problem_responses(*AUTHENTICATED, 404),
        summary="Page through the vectors in id order",
    )
    async def scroll_vectors(
        self,
        tenant: Tenant,
        collections: Service,
        name: Name,
        limit: PageLimit = 100,
        cursor: Cursor = None,
        include_vector: Annotated[bool, QueryParameter(description="Include the vectors themselves")] = False,
    ) -> VectorPage:
        return await collections.vectors.scroll(
            tenant, name, cursor=cursor, limit=limit, include_vector=include_vector
        )

    @get(
        "/{name:str}/vectors/{vector_id:str}",
        operation_id="getVector",
        guards=READ,
        responses=problem_responses(*AUTHENTICATED, 404),
        summary="One vector with its metadata",
    )
    async def get_vector(
        self, tenant: Tenant, collections: Service, name: Name, vector_id: FromPath[str]
    ) -> VectorRecord:
        return await collections.vectors.get(tenant, name, vector_id)

    @delete(
        "/{name:str}/vectors/{vector_id:str}",
        operation_id="deleteVector",
        guards=WRITE,
        responses=problem_responses(*AUTHENTICATED, 404),
        summary="Delete one vector",
    )
    async def delete_vector(
        self, tenant: Tenant, collections: Service, name: Name, vector_id: FromPath[str]
    ) -> None:
        await collections.vectors.delete_one(tenant, name, vector_id)

    @post(
        "/{name:str}/vectors/delete",
        operation_id="deleteVectors",
        guards=WRITE,
        status_code=200,
        responses=problem_responses(*AUTHENTICATED, 404),
        summary="Delete vectors by ids or by a metadata filter",
    )
    async def delete_vectors(
        self, tenant: Tenant, collections: Service, name: Name, data: JSONBody[DeleteRequest]
    ) -> DeleteResult:
        return await collections.vectors.delete(tenant, name, data)

    @post(
        "/{name:str}/search",
        operation_id="searchCollection",
        guards=READ,
        status_code=200,
        responses=problem_responses(*AUTHENTICATED, 404),
        summary="Nearest neighbours of a vector; higher score is better for every metric",
    )
    async def search(
        self, tenant: Tenant, collections: Service, name: Name, data: JSONBody[SearchRequest]
    ) -> SearchResult:
        return await collections.searches.search(tenant, name, data)

    @post(
        "/{name:str}/search/batch",
        operation_id="searchCollectionBatch",
        guards=READ,
        status_code=200,
        responses=problem_responses(*AUTHENTICATED, 404),
        summary="Up to 100 searches in one request",
    )
    async def search_batch(
        self, tenant: Tenant, collections: Service, name: Name, data: JSONBody[BatchSearchRequest]
    ) -> BatchSearchResult:
        return await collections.searches.search_batch(tenant, name, data.queries)
