"""/api/v1/sessions: thin handlers; the rules live in SessionService."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from service.auth.guards import operator_only, requires
from service.auth.principal import Permission, Principal, TenantPrincipal
from service.collections.models import SearchMode
from service.errors import AUTHENTICATED, InvalidRequest, problem_responses
from service.pagination import Cursor, PageLimit
from service.sessions.models import (
    CreateDelegationRequest,
    CreatedSession,
    CreateSessionRequest,
    Delegation,
    ExchangeDelegationRequest,
    JsonWebKeySet,
    RotatedSigningKey,
    Session,
    SessionPage,
    SessionSearchRequest,
    SessionSearchResult,
)
from service.sessions.service import SessionService

Service = NamedDependency[SessionService]
Caller = NamedDependency[Principal]
Tenant = NamedDependency[TenantPrincipal]
SessionId = FromPath[str]

# Any tenant REST key may start read-only sessions of what it can read itself.
READ = [requires(Permission.READ_ONLY)]
# A session token may read, search and end its own session (and nothing else here).
OWN_SESSION = {"session_access": True}


def _vector(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InvalidRequest.field(
            "vector",
            "not a list of numbers",
            "vector: a comma-separated list of numbers, e.g. vector=0.1,0.2,0.3",
            source="query",
        ) from None
    return values


class SessionsController(Controller):
    """Read-only sessions of the caller's tenant; another tenant's sessions are simply not found."""

    path = "/api/v1/sessions"
    tags = ["sessions"]

    @post(
        "",
        operation_id="createSession",
        guards=READ,
        responses=problem_responses(*AUTHENTICATED, 404, 429),
        summary="Start a read-only session of some collections; returns its token (shown once)",
    )
    async def create_session(
        self, tenant: Tenant, sessions: Service, data: JSONBody[CreateSessionRequest]
    ) -> CreatedSession:
        return await sessions.create(tenant, data)

    @post(
        "/delegations",
        operation_id="createDelegation",
        guards=READ,
        responses=problem_responses(*AUTHENTICATED, 404),
        summary="A delegation token: someone without a key exchanges it (once) for a session",
    )
    async def create_delegation(
        self, tenant: Tenant, sessions: Service, data: JSONBody[CreateDelegationRequest]
    ) -> Delegation:
        return await sessions.delegate(tenant, data)

    @post(
        "/create",
        operation_id="exchangeDelegation",
        security=[{}],  # no API key (an empty requirement: anonymous)
        responses=problem_responses(400, 401, 403, 404, 409, 429, 503),
        summary="Exchange a delegation token for a session (no API key: the token is the credential)",
    )
    async def exchange(self, sessions: Service, data: JSONBody[ExchangeDelegationRequest]) -> CreatedSession:
        return await sessions.exchange(data)

    @get(
        "/keys",
        operation_id="getSessionSigningKeys",
        security=[{}],  # no API key (an empty requirement: anonymous)
        responses=problem_responses(503),
        summary="The public keys that verify delegation and session tokens (JWKS, RFC 7517)",
    )
    async def keys(self, sessions: Service) -> JsonWebKeySet:
        return await sessions.jwks()

    @get(
        "",
        operation_id="listSessions",
        guards=READ,
        responses=problem_responses(*AUTHENTICATED),
        summary="The tenant's sessions, in id order",
    )
    async def list_sessions(
        self,
        tenant: Tenant,
        sessions: Service,
        limit: PageLimit = 100,
        cursor: Cursor = None,
        live: Annotated[bool, QueryParameter(description="Only sessions not yet ended")] = False,
    ) -> SessionPage:
        return await sessions.list_page(tenant, cursor=cursor, limit=limit, live_only=live)

    @get(
        "/{session_id:str}",
        operation_id="getSession",
        guards=READ,
        opt=OWN_SESSION,
        responses=problem_responses(*AUTHENTICATED, 404),
        summary="A session: its collections, expiry and queries used",
    )
    async def get_session(self, tenant: Tenant, sessions: Service, session_id: SessionId) -> Session:
        return await sessions.get(tenant, session_id)

    @delete(
        "/{session_id:str}",
        operation_id="deleteSession",
        guards=READ,
        opt=OWN_SESSION,
        responses=problem_responses(*AUTHENTICATED, 404),
        summary="End a session now (its token stops working on every replica within a second)",
    )
    async def delete_session(self, tenant: Tenant, sessions: Service, session_id: SessionId) -> None:
        await sessions.delete(tenant, session_id)

    @post(
        "/{session_id:str}/search",
        operation_id="searchSession",
        guards=READ,
        opt=OWN_SESSION,
        status_code=200,
        responses=problem_responses(*AUTHENTICATED, 404, 409),
        summary="Search one of the session's collections (counts towards max_queries)",
    )
    async def search(
        self,
        tenant: Tenant,
        sessions: Service,
        session_id: SessionId,
        data: JSONBody[SessionSearchRequest],
    ) -> SessionSearchResult:
        return await sessions.search(tenant, session_id, data)

    @get(
        "/{session_id:str}/search",
        operation_id="searchSessionByQueryString",
        guards=READ,
        opt=OWN_SESSION,
        responses=problem_responses(*AUTHENTICATED, 404, 409),
        # URLs stay well under the server's 16 KiB request head: longer queries use the POST form.
        summary="The same search with a query string: ?q=...&top_k=10 or ?vector=0.1,0.2,...",
    )
    async def search_get(
        self,
        tenant: Tenant,
        sessions: Service,
        session_id: SessionId,
        text: Annotated[
            str | None,
            QueryParameter(
                name="q", description="Text (the POST form's query)", min_length=1, max_length=4000
            ),
        ] = None,
        vector: Annotated[
            str | None, QueryParameter(description="Comma-separated numbers", max_length=8000)
        ] = None,
        mode: Annotated[
            SearchMode, QueryParameter(description="vector | keyword | hybrid")
        ] = SearchMode.VECTOR,
        collection: Annotated[
            str | None, QueryParameter(description="Required with several collections")
        ] = None,
        top_k: Annotated[int, QueryParameter(ge=1, le=1000)] = 10,
        threshold: Annotated[float | None, QueryParameter(description="Minimum score")] = None,
    ) -> SessionSearchResult:
        request = SessionSearchRequest(
            vector=_vector(vector) if vector is not None else None,
            query=text,
            mode=mode,
            collection=collection,
            top_k=top_k,
            threshold=threshold,
        )
        return await sessions.search(tenant, session_id, request)


class SessionKeysAdminController(Controller):
    path = "/api/v1/admin/sessions"
    tags = ["sessions"]
    guards = [operator_only]

    @post(
        "/keys/rotate",
        operation_id="rotateSessionSigningKey",
        status_code=200,
        responses=problem_responses(*AUTHENTICATED),
        summary="A new signing key; tokens signed by the old ones stay valid until they expire",
    )
    async def rotate(self, principal: Caller, sessions: Service) -> RotatedSigningKey:
        return RotatedSigningKey(kid=await sessions.rotate_signing_key(principal))
