"""The official MCP SDK's server, wired to the tools: streamable HTTP, stateless, JSON responses.

Stateless on purpose: protocol revision 2026-07-28 has no sessions at all, and clients of the
previous revisions (the initialize handshake) are served request by request too, so every HTTP
request is authenticated on its own and any replica can answer any request. Responses are plain
JSON (no SSE): every tool answers once, and nothing is sent to clients unasked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import mcp_types as types
from litestar import Litestar
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError

from service import __version__
from service.auth.authenticator import Authenticator
from service.auth.principal import TenantPrincipal
from service.config import Settings
from service.mcp.auth import McpAuthentication, transport_security
from service.mcp.service import McpService
from service.mcp.tools import TOOLS, Tool
from service.problems import problem_of

INSTRUCTIONS = (
    "vectorhive: a vector database. Collections hold vectors of one dimension with JSON metadata. "
    "Call list_collections first, describe_collection for a collection's dimension and metric, "
    "then search. Errors are tool results with a problem document: code, detail and, for bad "
    "arguments, errors naming the field."
)


def _principal(ctx: ServerRequestContext[Any, Any]) -> TenantPrincipal:
    """The caller McpAuthentication put into the HTTP request's scope."""
    request = ctx.request
    principal = getattr(request, "scope", {}).get("user")
    if not isinstance(principal, TenantPrincipal):
        # Only reachable if the SDK were served without McpAuthentication in front of it.
        raise MCPError(code=types.INVALID_REQUEST, message="Not authenticated")
    return principal


def _request_id(ctx: ServerRequestContext[Any, Any]) -> str | None:
    state = getattr(ctx.request, "scope", {}).get("state", {})
    value = state.get("request_id")
    return value if isinstance(value, str) else None


def _describe(tool: Tool) -> types.Tool:
    return types.Tool(
        name=tool.name,
        title=tool.title,
        description=tool.description,
        input_schema=tool.input_schema,
        output_schema=tool.output_schema,
        annotations=types.ToolAnnotations(
            title=tool.title,
            read_only_hint=not tool.writes,
            destructive_hint=tool.destructive if tool.writes else None,
            idempotent_hint=tool.idempotent,
            open_world_hint=False,  # the tenant's own data, nothing outside
        ),
    )


def build_server(service: McpService) -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        principal = _principal(ctx)
        try:
            await service.count_request(principal, "tools/list")
        except Exception as exc:
            # Not a tool call, so a JSON-RPC error; it carries the same problem document.
            problem = problem_of(exc)
            raise MCPError(
                code=types.INTERNAL_ERROR if problem.status_code >= 500 else types.INVALID_REQUEST,
                message=problem.detail,
                data={"code": problem.code, "status": problem.status_code},
            ) from None
        return types.ListToolsResult(tools=[_describe(tool) for tool in service.tools_for(principal)])

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        principal = _principal(ctx)
        tool = TOOLS.get(params.name)
        if tool is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {params.name}")
        outcome = await service.call(principal, tool, params.arguments or {}, _request_id(ctx))
        return types.CallToolResult(
            content=[types.TextContent(text=outcome.text)],
            # An error's problem document is the text only: clients check structured content
            # against the tool's outputSchema even on errors (the TypeScript SDK does).
            structured_content=None if outcome.is_error else outcome.data,
            is_error=outcome.is_error,
        )

    def input_schema(name: str) -> dict[str, Any] | None:
        # For the SDK's Mcp-Param header checks: the schema by name, without running tools/list
        # (which would count as a request of the caller).
        tool = TOOLS.get(name)
        return tool.input_schema if tool is not None else None

    return Server(
        "vectorhive",
        version=__version__,
        title="vectorhive",
        instructions=INSTRUCTIONS,
        get_tool_input_schema=input_schema,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


class McpEndpoint:
    """The ASGI app mounted at /mcp, and the lifespan that runs the SDK's session manager."""

    def __init__(self, settings: Settings, authenticator: Authenticator, service: McpService) -> None:
        self.settings = settings.mcp
        self.service = service
        # Session tokens' uses are counted by the verifier the app attaches to the Authenticator
        # (after this endpoint is built, hence read at each call).
        service.sessions = lambda: authenticator.sessions
        self.server = build_server(service)
        self.manager = StreamableHTTPSessionManager(
            app=self.server,
            json_response=True,
            stateless=True,
            security_settings=transport_security(settings.mcp),
            # An upsert as large as REST accepts.
            max_request_body_size=settings.collections.max_batch_bytes,
        )
        self.app = McpAuthentication(
            self.manager.handle_request,
            authenticator,
            settings.mcp,
            max_body_bytes=settings.collections.max_batch_bytes,
        )

    @asynccontextmanager
    async def lifespan(self, _: Litestar) -> AsyncIterator[None]:
        async with self.manager.run():
            yield
