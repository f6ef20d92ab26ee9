"""What a credential may do over MCP, and one tool call from arguments to result or tool error.

What each credential may do on the MCP endpoint (README "MCP"):

- an MCP key (`--permission mcp`): read and write its tenant's vectors, i.e. every tool, and
  nothing else: no tool creates or deletes collections, touches keys, tenants, quotas or the
  cluster (those ADMIN functions have no tools), and MCP keys are refused by every REST route;
- a tenant key of permission read_write or admin: every tool as well (admin gains nothing more);
- a read_only key (and a read-only session token): the read tools only;
- a key limited to some collections: its collections only, everywhere (the services treat any
  other name as not found, and list_collections lists only those);
- operator keys: none (the transport answers 403 before any tool is reached).

Every call re-checks the permission, whatever tools/list showed: a key's permission cannot
change, but the call may come from a client that never listed the tools.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from service.auth.principal import Permission, Principal
from service.body import validation_problem
from service.errors import PROBLEM_TYPE_PREFIX, Forbidden, InvalidRequest, problem_of
from service.mcp.tools import TOOLS, Services, Tool
from service.metrics import MCP_TOOL_CALLS, MCP_TOOL_SECONDS, TENANT_REQUESTS
from service.quota.service import QuotaService
from service.quota.usage import UsageMeter

log = logging.getLogger("vectorhive.mcp")

# Permissions that include the write tools. An MCP key counts as read_write on its tenant.
_WRITERS = frozenset({Permission.MCP, Permission.READ_WRITE, Permission.ADMIN})

_encode = msgspec.json.Encoder().encode


def may_write(principal: Principal) -> bool:
    return principal.permission in _WRITERS


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
        quotas: QuotaService,
        meter: UsageMeter,
        session_uses: Callable[[Principal, str], Awaitable[None]] | None = None,
    ) -> None:
        self.services = services
        self.quotas = quotas
        self.meter = meter
        # A session token's tool calls count as the REST operation they mirror (max_queries, audit).
        self.session_uses = session_uses

    def tools_for(self, principal: Principal) -> list[Tool]:
        """The tools this credential may call (tools/list shows exactly these)."""
        writer = may_write(principal)
        return [tool for tool in TOOLS.values() if writer or not tool.writes]

    async def count_request(self, principal: Principal, name: str) -> None:
        """A tenant's window limits, metric and usage, as TenantLimitsMiddleware does for REST
        requests, with the tool (or MCP method) as the operation."""
        assert principal.tenant_id is not None
        await self.quotas.check_request(principal.tenant_id)
        TENANT_REQUESTS.labels(principal.tenant_id, operation(name)).inc()
        self.meter.record(principal.tenant_id, "requests", 1, operation(name))

    def _check_permission(self, principal: Principal, tool: Tool) -> None:
        if tool.writes and not may_write(principal):
            # The REST guard's words for the same refusal (service/auth/guards.py).
            raise Forbidden(
                f"This key has permission '{principal.permission}'; this operation needs "
                f"'{Permission.READ_WRITE}'.",
                code="insufficient_permission",
            )

    @staticmethod
    def _arguments(tool: Tool, arguments: dict[str, Any]) -> Any:
        try:
            return tool.decoder.decode(_encode(arguments))
        except msgspec.ValidationError as exc:
            raise validation_problem(exc, tool.args) from None
        except RecursionError:
            raise InvalidRequest(
                "The arguments nest arrays and objects too deeply (about 1,000 levels or more).",
                errors=[{"source": "body", "message": "nested too deeply"}],
            ) from None

    async def call(
        self, principal: Principal, tool: Tool, arguments: dict[str, Any], request_id: str | None
    ) -> ToolOutcome:
        """Limits, permission, arguments, the service call; any failure becomes a tool error."""
        started = time.perf_counter()
        code = "ok"
        try:
            await self.count_request(principal, tool.name)
            self._check_permission(principal, tool)
            if principal.session_id is not None and self.session_uses is not None:
                await self.session_uses(principal, tool.mirrors)
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
