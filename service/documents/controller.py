"""/api/v1/collections/{name}/documents: thin handlers; the rules live in DocumentService."""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from service.auth.guards import requires
from service.auth.principal import Permission, TenantPrincipal
from service.documents.models import AddDocumentsRequest, AddDocumentsResult, Document, DocumentPage
from service.documents.service import DocumentService
from service.errors import AUTHENTICATED, problem_responses
from service.pagination import Cursor, PageLimit

Name = FromPath[str]
DocumentId = FromPath[str]
Service = NamedDependency[DocumentService]
Tenant = NamedDependency[TenantPrincipal]

READ = [requires(Permission.READ_ONLY)]
WRITE = [requires(Permission.READ_WRITE)]


class DocumentsController(Controller):
    """Documents of a collection bound to an embedding model, stored as embedded chunks."""

    path = "/api/v1/collections/{name:str}/documents"
    tags = ["documents"]

    @post(
        "",
        operation_id="addDocuments",
        guards=WRITE,
        status_code=200,
        responses=problem_responses(*AUTHENTICATED, 404, 409, 429, 503),
        summary="Store documents: split into chunks, embedded, replacing earlier versions (all or nothing)",
    )
    async def add_documents(
        self, tenant: Tenant, documents: Service, name: Name, data: JSONBody[AddDocumentsRequest]
    ) -> AddDocumentsResult:
        return await documents.add(tenant, name, data)

    @get(
        "",
        operation_id="listDocuments",
        guards=READ,
        responses=problem_responses(*AUTHENTICATED, 404),
        summary="Page through the documents in id order",
    )
    async def list_documents(
        self, tenant: Tenant, documents: Service, name: Name, limit: PageLimit = 100, cursor: Cursor = None
    ) -> DocumentPage:
        return await documents.list_page(tenant, name, cursor=cursor, limit=limit)

    @get(
        "/{document_id:str}",
        operation_id="getDocument",
        guards=READ,
        responses=problem_responses(*AUTHENTICATED, 404),
        summary="A document: its text, metadata and chunks",
    )
    async def get_document(
        self, tenant: Tenant, documents: Service, name: Name, document_id: DocumentId
    ) -> Document:
        return await documents.get(tenant, name, document_id)

    @delete(
        "/{document_id:str}",
        operation_id="deleteDocument",
        guards=WRITE,
        responses=problem_responses(*AUTHENTICATED, 404),
        summary="Delete a document and all its chunks",
    )
    async def delete_document(
        self, tenant: Tenant, documents: Service, name: Name, document_id: DocumentId
    ) -> None:
        await documents.delete(tenant, name, document_id)
