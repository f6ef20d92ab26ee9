"""Authentication of MCP requests: the app's own Authenticator, before the MCP SDK sees anything.

Each HTTP request to /mcp is authenticated on its own (the transport is stateless), so a key
revoked or a tenant suspended mid-conversation stops working at the client's next request. The
MCP authorization spec (RFC 9728 / RFC 6750) shapes the refusals: 401 with a `WWW-Authenticate:
Bearer` challenge naming the protected resource metadata; 403 for a credential that may not use
MCP (operator keys) or a suspended tenant. Bodies are the app's one error shape, problem+json.
"""

from __future__ import annotations

from typing import Any

import mcp_types as types
import msgspec
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth.authenticator import Authenticator
from service.auth.principal import Principal, TenantPrincipal
from service.config import McpSettings
from service.errors import (
    PROBLEM_MEDIA_TYPE,
    PROBLEM_TYPE_PREFIX,
    Forbidden,
    ServiceError,
    Unauthorized,
)
from service.problems import problem_of

METADATA_PATH = "/.well-known/oauth-protected-resource/mcp"
ENDPOINT_PATH = "/mcp"


def resource_url(settings: McpSettings, scheme: str, host: str | None) -> str:
    """The endpoint's URL: configured, or from the request (Host was checked against allowed_hosts)."""
    if settings.resource_url is not None:
        return settings.resource_url.rstrip("/")
    return f"{scheme}://{host or 'localhost'}{ENDPOINT_PATH}"


def metadata_url(resource: str) -> str:
    """RFC 9728 section 3.1: the well-known path inserted between the host and the resource's path."""
    scheme, _, rest = resource.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host}/.well-known/oauth-protected-resource{slash}{path}"


def transport_security(settings: McpSettings) -> TransportSecuritySettings:
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=settings.dns_rebinding_protection,
        allowed_hosts=list(settings.allowed_hosts),
        allowed_origins=list(settings.allowed_origins),
    )


def _wants_jsonrpc(scope: Scope) -> bool:
    """MCP clients accept application/json (and text/event-stream), not problem+json: they get the
    refusal as a JSON-RPC error, which their SDKs surface with its message ("The API key has been
    revoked.") instead of a bare HTTP status. Anyone else gets problem+json."""
    accept = ",".join(
        value.decode("latin-1").lower() for name, value in scope.get("headers", []) if name == b"accept"
    )
    return "application/json" in accept and PROBLEM_MEDIA_TYPE not in accept


async def send_problem(
    scope: Scope, send: Send, exc: Exception, extra_headers: dict[str, str] | None = None
) -> None:
    """The app's problem document; for MCP clients inside a JSON-RPC error (as its data)."""
    problem = problem_of(exc)
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + problem.code,
        "title": problem.title,
        "status": problem.status_code,
        "detail": problem.detail,
        "code": problem.code,
        "instance": ENDPOINT_PATH,
    }
    request_id = scope.get("state", {}).get("request_id")
    if request_id:
        body["request_id"] = request_id
    if problem.errors:
        body["errors"] = problem.errors
    body.update(problem.members)
    media_type = PROBLEM_MEDIA_TYPE
    if _wants_jsonrpc(scope):
        media_type = "application/json"
        code = types.INTERNAL_ERROR if problem.status_code >= 500 else types.INVALID_REQUEST
        # id null: the request is refused before its body is read (JSON-RPC 2.0, section 5).
        error = {"code": code, "message": problem.detail, "data": body}
        body = {"jsonrpc": "2.0", "id": None, "error": error}
    encoded = msgspec.json.encode(body)
    headers = {**(problem.headers or {}), **(extra_headers or {})}
    await send(
        {
            "type": "http.response.start",
            "status": problem.status_code,
            "headers": [
                (b"content-type", media_type.encode()),
                (b"content-length", str(len(encoded)).encode()),
                *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": encoded})


class McpAuthentication:
    """ASGI: Host/Origin checks, then the bearer credential; the Principal goes into scope["user"]
    (where the access log and the tools find it)."""

    def __init__(
        self, app: ASGIApp, authenticator: Authenticator, settings: McpSettings, max_body_bytes: int
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.settings = settings
        self.max_body_bytes = max_body_bytes
        # The SDK checks these again inside its transport; checking first means that a request for a
        # foreign Host learns nothing, not even the shape of our challenge.
        self.security = TransportSecurityMiddleware(transport_security(settings))

    def _challenge(self, scope: Scope, request: Request, error: str | None, detail: str) -> dict[str, str]:
        resource = resource_url(self.settings, scope.get("scheme", "http"), request.headers.get("host"))
        parts = ['Bearer realm="vectorhive"', f'resource_metadata="{metadata_url(resource)}"']
        if error is not None:
            # RFC 6750 section 3: no error code when the request carried no credential at all.
            description = detail.replace('"', "'")
            parts += [f'error="{error}"', f'error_description="{description}"']
        return {"WWW-Authenticate": ", ".join(parts)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        refused = await self.security.validate_request(request, is_post=False)
        if refused is not None:
            await send_problem(scope, send, self._refusal(refused.status_code, request))
            return
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            # The SDK would refuse it too (in plain text); REST's words and shape instead.
            too_large = ServiceError(
                f"The request body is larger than the limit of {self.max_body_bytes:,} bytes.",
                code="payload_too_large",
            )
            too_large.status, too_large.title = 413, "The request body is too large"
            await send_problem(scope, send, too_large)
            return
        try:
            principal = await self._authenticate(scope, request)
        except Unauthorized as exc:
            error = None if "authorization" not in request.headers else "invalid_token"
            await send_problem(scope, send, exc, self._challenge(scope, request, error, exc.detail))
            return
        except Exception as exc:  # 429 (failure floods), 503 (HiveHub or the database down), ...
            await send_problem(scope, send, exc)
            return
        scope["user"] = principal
        await self.app(scope, receive, send)

    @staticmethod
    def _refusal(status: int, request: Request) -> ServiceError:
        """The SDK's verdict (421 for the Host, 403 for the Origin) in the app's words and shape."""
        if status == 421:
            error = ServiceError(
                f"This server does not answer MCP requests for the host "
                f"'{request.headers.get('host', '')}' (not in mcp.allowed_hosts).",
                code="misdirected_request",
            )
            error.status, error.title = 421, "Misdirected request"
            return error
        return Forbidden(
            f"Requests from the origin '{request.headers.get('origin', '')}' may not use the MCP "
            "endpoint (not in mcp.allowed_origins).",
            code="origin_not_allowed",
        )

    async def _authenticate(self, scope: Scope, request: Request) -> TenantPrincipal:
        header = request.headers.get("authorization")
        if header is None:
            if not self.authenticator.settings.require_authentication:
                return self._tenant(self.authenticator.default_principal())
            raise Unauthorized("No API key was sent: add the header 'Authorization: Bearer <key>'.")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("The Authorization header must have the form 'Bearer <key>'.")
        client = scope.get("client")
        return self._tenant(await self.authenticator.authenticate(token, client[0] if client else None))

    @staticmethod
    def _tenant(principal: Principal) -> TenantPrincipal:
        """Only a caller that acts for an active tenant reaches the tools (as a TenantPrincipal)."""
        tenant = principal.as_tenant()
        if principal.is_operator or tenant is None:
            raise Forbidden(
                "Operator keys cannot use the MCP endpoint; use an MCP key or a tenant key.",
                code="operator_key_not_allowed",
            )
        if not tenant.tenant_active:
            raise Forbidden(f"Tenant '{tenant.tenant_id}' is suspended.", code="tenant_suspended")
        return tenant
