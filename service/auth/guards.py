"""Route guards: what a principal may do. Authentication itself happens in the middleware."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.authentication import AbstractAuthenticationMiddleware, AuthenticationResult

from service.auth.authenticator import Authenticator
from service.auth.principal import Permission, Principal, TenantPrincipal
from service.errors import Forbidden, Unauthorized

# Routes any caller may reach without a key. The sessions' public keys (JWKS) are for anyone who
# verifies tokens; /sessions/create authenticates by the delegation token in its body.
PUBLIC_PATHS = [
    "^/healthz$",
    "^/readyz$",
    "^/schema",
    "^/docs$",
    "^/api/v1/sessions/keys$",
    "^/api/v1/sessions/create$",
]

# The operations a session token may call: reads and searches of its own collections (the
# collection service limits it to them). Handlers of other features opt in with
# opt={"session_access": True}. Everything else answers 403 session_token_not_allowed.
SESSION_OPERATIONS = frozenset(
    {
        "getCollection",
        "getVector",
        "getDocument",
        "searchCollection",
        "searchCollectionBatch",
        "answerQuestion",
        "retrieveContext",
    }
)


class BearerAuthMiddleware(AbstractAuthenticationMiddleware):
    def __init__(self, app: Any, authenticator: Authenticator, exclude: list[str] | None = None) -> None:
        # No method is exempt (Litestar exempts OPTIONS for CORS preflights by default, and this
        # service does not do CORS): every request to a protected route carries a principal.
        super().__init__(app, exclude=exclude, exclude_http_methods=[])
        self.authenticator = authenticator

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        principal = await authenticate_headers(
            self.authenticator,
            connection.headers.get("authorization"),
            connection.client.host if connection.client is not None else None,
            connection.headers.getall("x-forwarded-for", []),
        )
        # The authenticator travels with the request as connection.auth, for the guards below.
        return AuthenticationResult(user=principal, auth=self.authenticator)


async def authenticate_headers(
    authenticator: Authenticator, authorization: str | None, peer: str | None, forwarded_for: list[str]
) -> Principal:
    """The caller of a request, from its Authorization header (the middleware above, and the lean
    path of service.lean_path, which serves the hot routes without Litestar's machinery)."""
    if authorization is None:
        if not authenticator.settings.require_authentication:
            return authenticator.default_principal()
        raise Unauthorized("No API key was sent: add the header 'Authorization: Bearer <key>'.")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("The Authorization header must have the form 'Bearer <key>'.")
    # The TCP peer, or what a trusted reverse proxy says the client is (server.trusted_proxies).
    client = authenticator.client_address.resolve(peer, forwarded_for)
    return await authenticator.authenticate(token, client)


def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    """The dependency `principal`: whoever the middleware authenticated (operator or tenant)."""
    return _principal(request)


def provide_tenant(request: Request[Any, Any, Any]) -> TenantPrincipal:
    """The dependency `tenant`: the caller as a TenantPrincipal, on routes whose guard
    (requires, any_principal) admitted a tenant. (The request's user stays the Principal that
    authentication made: Litestar checks a dependency's exact dataclass type, so handlers that
    take `principal: Principal` keep working beside those that take `tenant`.)"""
    admitted = request.scope.get("state", {}).get(_ADMITTED_TENANT)
    if isinstance(admitted, TenantPrincipal):
        return admitted
    tenant = _principal(request).as_tenant()
    if tenant is None:  # an operator on a route that takes `tenant`: a wiring mistake, not a 403
        raise RuntimeError(f"route {request.url.path} takes a tenant but its guard admits operators")
    return tenant


# Where a guard leaves the TenantPrincipal it admitted, for provide_tenant (made once per request).
_ADMITTED_TENANT = "vectorhive.admitted_tenant"


def _remember(connection: ASGIConnection[Any, Any, Any, Any], tenant: TenantPrincipal) -> None:
    connection.scope.setdefault("state", {})[_ADMITTED_TENANT] = tenant


# Guards are coroutines on purpose: Litestar runs a plain-function guard in a worker thread.


def _principal(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    principal = connection.scope.get("user")
    if not isinstance(principal, Principal):
        raise Unauthorized("No API key was sent: add the header 'Authorization: Bearer <key>'.")
    return principal


async def session_checks(
    authenticator: Authenticator | None, principal: Principal, handler: BaseRouteHandler
) -> None:
    """A session token may call only the session operations; each use is noted."""
    if principal.session_id is None:
        return
    operation = getattr(handler, "operation_id", None)
    if operation not in SESSION_OPERATIONS and not handler.opt.get("session_access"):
        raise Forbidden(
            "A session token works only for searching and reading its session's collections.",
            code="session_token_not_allowed",
        )
    if authenticator is not None and authenticator.sessions is not None:
        await authenticator.sessions.note_use(principal, str(operation))


def _admit_tenant(principal: Principal) -> TenantPrincipal:
    """The checks every tenant route makes."""
    if principal.is_operator:
        raise Forbidden(
            "Operator keys work only on /api/v1/admin and /api/v1/cluster; use a tenant key here.",
            code="operator_key_not_allowed",
        )
    if principal.permission is Permission.MCP:
        raise Forbidden("MCP keys work only on the MCP endpoint.", code="mcp_key_not_allowed")
    if not principal.tenant_active:
        raise Forbidden(f"Tenant '{principal.tenant_id}' is suspended.", code="tenant_suspended")
    tenant = principal.as_tenant()
    if tenant is None:  # authentication makes no such principal; refuse rather than guess
        raise Forbidden(
            "This key acts for no tenant; use a tenant key here.", code="operator_key_not_allowed"
        )
    return tenant


class RequiresGuard:
    """The guard `requires(permission)`; the lean path reads its permission and makes the same checks."""

    def __init__(self, permission: Permission) -> None:
        self.permission = permission
        self.__name__ = f"requires_{permission.value}"

    async def __call__(
        self, connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
    ) -> None:
        _remember(
            connection, await self.admit(getattr(connection, "auth", None), _principal(connection), handler)
        )

    async def admit(
        self, authenticator: Authenticator | None, principal: Principal, handler: BaseRouteHandler
    ) -> TenantPrincipal:
        tenant = _admit_tenant(principal)
        if not tenant.allows(self.permission):
            raise Forbidden(
                f"This key has permission '{tenant.permission}'; this operation needs '{self.permission}'.",
                code="insufficient_permission",
            )
        await session_checks(authenticator, tenant, handler)
        return tenant


def requires(permission: Permission) -> RequiresGuard:
    """A tenant key whose permission includes `permission`, of an active tenant."""
    return RequiresGuard(permission)


async def any_principal(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Operators, or tenant REST keys of an active tenant."""
    principal = _principal(connection)
    if not principal.is_operator:
        tenant = _admit_tenant(principal)
        await session_checks(getattr(connection, "auth", None), tenant, handler)
        _remember(connection, tenant)


async def operator_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    principal = _principal(connection)
    if not principal.is_operator:
        raise Forbidden("This endpoint needs an operator key.", code="operator_key_required")
