"""What a credential may do over MCP, and one tool call from arguments to result or tool error.

What each credential may do on the MCP endpoint (README "MCP"):

- an MCP key (`--permission mcp`): read and write its tenant's vectors, i.e. every tool, and
  nothing else: no tool creates or deletes collections, touches keys, tenants, quotas or the
  cluster (those ADMIN functions have no tools), and MCP keys are refused by every REST route;
- a tenant key of permission read_write or admin: every tool as well (admin gains nothing more);
- a read_only key: the read tools only;
- a session token: the read tools of its session's collections: list_collections (which lists
  only those), describe_collection, search and get_documents (what REST's SESSION_OPERATIONS
  admit), answer and context (the session's read endpoints issue 14 names); never a write tool.
  Each call counts as a use of the session like a REST request (SessionTokens.note_use): a tool
  that runs one search (search, answer, context) counts against max_queries, and one past the
  limit is a tool error session_queries_exhausted;
- answer and context only while generation is enabled (both need the chat model);
- a key limited to some collections: its collections only, everywhere (the services treat any
  other name as not found, and list_collections lists only those);
- operator keys: none (the transport answers 403 before any tool is reached).

Every call re-checks the permission, whatever tools/list showed: a key's permission cannot
change, but the call may come from a client that never listed the tools.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from service.auth.authenticator import SessionTokens
from service.auth.guards import SESSION_OPERATIONS
from service.auth.principal import Permission, Principal, TenantPrincipal
from service.body import validation_problem
from service.errors import PROBLEM_TYPE_PREFIX, Forbidden, InvalidRequest
from service.inference.base import ModelUnavailable
from service.mcp.tools import TOOLS, Services, Tool
from service.metrics import MCP_TOOL_CALLS, MCP_TOOL_SECONDS
from service.problems import problem_of
from service.quota.middleware import TenantRequests

log = logging.getLogger("vectorhive.mcp")

# Permissions that include the write tools. An MCP key counts as read_write on its tenant.
_WRITERS = frozenset({Permission.MCP, Permission.READ_WRITE, Permission.ADMIN})

_encode = msgspec.json.Encoder().encode


# The tools a session token may call: those mirroring an operation REST admits for sessions, plus
# list_collections (discovery: the collection service lists only the session's collections) and
# the grounded reads of its collections (answer, context).
SESSION_TOOLS = frozenset(
    {tool.name for tool in TOOLS.values() if tool.mirrors in SESSION_OPERATIONS and not tool.writes}
    | {"list_collections", "answer", "context"}
)


def may_write(principal: Principal) -> bool:
    # A session token's principal is READ_ONLY already; said again so that no write tool can
    # ever depend on that.
    return principal.permission in _WRITERS and principal.session_id is None


def may_call(principal: Principal, tool: Tool) -> bool:
    if principal.session_id is not None and tool.name not in SESSION_TOOLS:
        return False
    return may_write(principal) or not tool.writes


def operation(name: str) -> str:
    """The operation name in usage and metrics: a bounded set (tool names and MCP methods)."""
    return f"mcp.{name}"


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """A tool's result or its error, both as JSON: structured content and its text."""

    data: dict[str, Any]
    is_error: bool

    @property
    def text(self) -> str:
        return _encode(self.data).decode()


class McpService:
    def __init__(
        self,
        services: Services,
        requests: TenantRequests,
        sessions: Callable[[], SessionTokens | None] = lambda: None,
    ) -> None:
        self.services = services
        self.requests = requests
        # Read at each call: the app attaches the session verifier to the Authenticator after
        # the MCP endpoint is built.
        self.sessions = sessions

    def available(self, tool: Tool) -> bool:
        """Whether the server offers the tool at all (answer and context need generation)."""
        return self.services.generation or not tool.needs_generation

    def tools_for(self, principal: TenantPrincipal) -> list[Tool]:
        """The tools this credential may call (tools/list shows exactly these)."""
        return [tool for tool in TOOLS.values() if self.available(tool) and may_call(principal, tool)]

    async def count_request(self, principal: TenantPrincipal, name: str) -> None:
        """A tenant's window limits, metric and usage, as for REST requests, with the tool (or MCP
        method) as the operation."""
        await self.requests.admit(principal, operation(name))

    async def _check_permission(self, principal: TenantPrincipal, tool: Tool) -> None:
        if not self.available(tool):
            # What REST answers for the same operation (GeneratorRegistry.generator).
            raise ModelUnavailable(
                "Text generation is switched off on this server (generation.enabled: false).",
                code="generation_disabled",
            )
        if principal.session_id is not None:
            await self._check_session(principal, tool)
            return
        if tool.writes and not may_write(principal):
            # The REST guard's words for the same refusal (service/auth/guards.py).
            raise Forbidden(
                f"This key has permission '{principal.permission}'; this operation needs "
                f"'{Permission.READ_WRITE}'.",
                code="insufficient_permission",
            )

    async def _check_session(self, principal: TenantPrincipal, tool: Tool) -> None:
        """REST's session guard (service/auth/guards.py) for a tool: the same refusal, and the
        call counted as a use of the session (max_queries) before it runs, as REST counts it."""
        if tool.name not in SESSION_TOOLS:
            raise Forbidden(
                "A session token works only for searching and reading its session's collections.",
                code="session_token_not_allowed",
            )
        sessions = self.sessions()
        if sessions is not None:
            # note_use knows REST's operation ids: a tool that runs one search counts as one.
            await sessions.note_use(principal, "searchCollection" if tool.query else tool.mirrors)

    @staticmethod
    def _arguments(tool: Tool, arguments: dict[str, Any]) -> Any:
        try:
            return tool.decoder.decode(_encode(arguments))
        except msgspec.ValidationError as exc:
            raise validation_problem(exc, tool.args) from None
        except RecursionError:
            raise InvalidRequest.field(
                None,
                "nested too deeply",
                "The arguments nest arrays and objects too deeply (about 1,000 levels or more).",
            ) from None

    async def call(
        self, principal: TenantPrincipal, tool: Tool, arguments: dict[str, Any], request_id: str | None
    ) -> ToolOutcome:
        """Limits, permission, arguments, the service call; any failure becomes a tool error."""
        started = time.perf_counter()
        code = "ok"
        try:
            await self.count_request(principal, tool.name)
            await self._check_permission(principal, tool)
            result = await tool.run(self.services, principal, self._arguments(tool, arguments))
            return ToolOutcome(data=msgspec.to_builtins(result), is_error=False)
        except Exception as exc:
            outcome = self._error(exc, tool.name, request_id)
            code = str(outcome.data["code"])
            return outcome
        finally:
            elapsed = time.perf_counter() - started
            MCP_TOOL_CALLS.labels(tool.name, code).inc()
            MCP_TOOL_SECONDS.labels(tool.name).observe(elapsed)
            log.info(
                "mcp tool call",
                extra={
                    "request_id": request_id,
                    "tool": tool.name,
                    "outcome": code,
                    "tenant_id": principal.tenant_id,
                    "key_id": principal.key_id,
                    "duration_ms": round(elapsed * 1000, 3),
                },
            )

    @staticmethod
    def _error(exc: Exception, tool: str, request_id: str | None) -> ToolOutcome:
        """The REST problem document of the same failure, as a tool error (isError)."""
        problem = problem_of(exc)
        data: dict[str, Any] = {
            "type": PROBLEM_TYPE_PREFIX + problem.code,
            "title": problem.title,
            "status": problem.status_code,
            "detail": problem.detail,
            "code": problem.code,
            "tool": tool,
        }
        if request_id:
            data["request_id"] = request_id
        if problem.errors:
            data["errors"] = problem.errors
        data.update(problem.members)
        retry = (problem.headers or {}).get("Retry-After")
        if retry is not None:
            # REST says it in a header; a tool result has none, so the document carries it.
            data["retry_after"] = int(retry)
        return ToolOutcome(data=data, is_error=True)
