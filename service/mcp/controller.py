"""/mcp (the MCP SDK's streamable HTTP transport, mounted) and its protected resource metadata."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.handlers import asgi
from litestar.types import Receive, Scope, Send

from service.config import McpSettings
from service.errors import problem_responses
from service.mcp.auth import ENDPOINT_PATH, METADATA_PATH, resource_url
from service.mcp.models import ProtectedResourceMetadata
from service.mcp.server import McpEndpoint

# Both authenticate on their own terms: /mcp with McpAuthentication (the MCP spec's challenge),
# the metadata document not at all (clients read it to learn how to authenticate).
_PUBLIC = {"exclude_from_auth": True}


def route_handlers(endpoint: McpEndpoint) -> list[Any]:
    settings: McpSettings = endpoint.settings

    # copy_scope=False: the principal McpAuthentication sets in the scope reaches the access log.
    @asgi(ENDPOINT_PATH, is_mount=True, copy_scope=False, opt=_PUBLIC)
    async def mcp(scope: Scope, receive: Receive, send: Send) -> None:
        """MCP over streamable HTTP (protocol 2026-07-28 and the earlier handshake revisions)."""
        # Litestar leaves a mount's requests without a route template; the access log and the
        # latency histogram label requests by it.
        scope["path_template"] = ENDPOINT_PATH
        await endpoint.app(scope, receive, send)  # type: ignore[arg-type]

    @get(
        METADATA_PATH,
        operation_id="getMcpProtectedResourceMetadata",
        opt=_PUBLIC,
        security=[{}],  # public: clients read it to learn how to authenticate
        tags=["mcp"],
        responses=problem_responses(400),
        summary="OAuth protected resource metadata of the MCP endpoint (RFC 9728)",
        sync_to_thread=False,
    )
    def protected_resource_metadata(request: Request[Any, Any, Any]) -> ProtectedResourceMetadata:
        """What an MCP client reads after a 401 from /mcp: the resource, and that a bearer token
        goes in the Authorization header (an API key, unless authorization servers are configured)."""
        resource = resource_url(settings, request.url.scheme, request.headers.get("host"))
        return ProtectedResourceMetadata(
            resource=resource,
            bearer_methods_supported=["header"],  # the only way MCP allows
            resource_name="vectorhive MCP server",
            authorization_servers=list(settings.authorization_servers) or None,
        )

    return [mcp, protected_resource_metadata]
