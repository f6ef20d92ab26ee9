"""/api/v1/collections/{name}/imports and /api/v1/imports: thin handlers; rules in ImportService."""

from __future__ import annotations

from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from service.auth.guards import requires
from service.auth.principal import Permission, TenantPrincipal
from service.errors import AUTHENTICATED, problem_responses
from service.imports.models import Import, ImportAccepted, ImportPage, ImportRequest
from service.imports.service import ImportService
from service.pagination import Cursor, PageLimit

Service = NamedDependency[ImportService]
Tenant = NamedDependency[TenantPrincipal]

READ = [requires(Permission.READ_ONLY)]
WRITE = [requires(Permission.READ_WRITE)]


class ImportsController(Controller):
    """Imports of vector databases from S5 into the caller's collections."""

    path = "/api/v1"
    tags = ["imports"]

    @post(
        "/collections/{name:str}/imports",
        operation_id="createImport",
        guards=WRITE,
        status_code=202,
        responses=problem_responses(*AUTHENTICATED, 404, 503),
        summary="Start importing an S5 vector database into a collection",
        description=(
            "Accepted at once; poll GET /api/v1/imports/{import_id}. All or nothing: the vectors appear "
            "in one commit when the import is loaded; a failed or cancelled import changes nothing. "
            "Searches during an import see the collection as last committed. With create_collection "
            "(the default) a missing collection is created from the manifest (cosine, float32)."
        ),
    )
    async def create_import(
        self, tenant: Tenant, imports: Service, name: FromPath[str], data: JSONBody[ImportRequest]
    ) -> Response[ImportAccepted]:
        accepted = await imports.submit(tenant, name, data)
        return Response(
            accepted, status_code=202, headers={"Location": f"/api/v1/imports/{accepted.import_id}"}
        )

    @get(
        "/imports",
        operation_id="listImports",
        guards=READ,
        responses=problem_responses(*AUTHENTICATED),
        summary="The tenant's imports, newest first",
    )
    async def list_imports(
        self, tenant: Tenant, imports: Service, limit: PageLimit = 100, cursor: Cursor = None
    ) -> ImportPage:
        return await imports.list_page(tenant, cursor=cursor, limit=limit)

    @get(
        "/imports/{import_id:str}",
        operation_id="getImport",
        guards=READ,
        responses=problem_responses(*AUTHENTICATED, 404),
        summary="An import's status and progress",
    )
    async def get_import(self, tenant: Tenant, imports: Service, import_id: FromPath[str]) -> Import:
        return await imports.get(tenant, import_id)

    @delete(
        "/imports/{import_id:str}",
        operation_id="cancelImport",
        guards=WRITE,
        status_code=200,
        responses=problem_responses(*AUTHENTICATED, 404, 409),
        summary="Cancel an import that has not finished; the collection stays as it was",
    )
    async def cancel_import(self, tenant: Tenant, imports: Service, import_id: FromPath[str]) -> Import:
        return await imports.cancel(tenant, import_id)
