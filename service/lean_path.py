"""The lean path: the hot collection routes (search, batch search, get a vector, upsert) served
without Litestar's per-request machinery, making every check the full stack makes.

Measured (docs/benchmarks.md, "The lean path"): for a search, Litestar's per-request work cost
about as much CPU as the search service itself: routing, a connection object, the authentication
middleware's wrapper, an anyio task group for the handler's two dependencies, a copy of the
handler for its guard, the signature model re-checking the already-decoded body, and the response
object. For the routes below this ASGI layer, in front of Litestar, does the same steps with the
same functions:

- authentication: `authenticate_headers`, the authentication middleware's own;
- the route's guard: `RequiresGuard.admit` (tenant checks, permission, session operations);
- window limits, the request counter and metering: `TenantRequests.admit`, the middleware's own;
- the body: `check_content_type` and `decode_strictly` with the route's own strict decoder, within
  the app's request_max_body_size;
- the handler: the controller's method with the same arguments, its result encoded as Litestar
  encodes it (the handler's serializer);
- failures: `problem_of`, the problem plugin's mapping, as the same problem+json document.

A request it does not take exactly (another method or path, a query string, a root path, an odd
Host header) goes to Litestar untouched, before anything was done for it. The routes, their
operation ids, path templates, guards, status codes and body types are read from the Litestar app,
so the lean path cannot drift from the documented API; tests/test_lean_path.py compares the two
paths response by response. `server.lean_path: false` switches it off.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass
from typing import Any

from litestar import Litestar
from litestar._asgi.utils import is_valid_host  # the router's own Host check
from litestar.enums import ScopeType
from litestar.exceptions import InternalServerException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute
from litestar.serialization import encode_json
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from service.auth.authenticator import Authenticator
from service.auth.guards import BearerAuthMiddleware, RequiresGuard, authenticate_headers
from service.auth.principal import Principal
from service.body import BodySpec, body_spec, check_content_type, decode_strictly
from service.errors import OPENAI_COMPATIBLE, PROBLEM_MEDIA_TYPE
from service.problems import problem_of
from service.quota.middleware import TenantLimitsMiddleware, TenantRequests

# The routes worth a lane of their own: what clients call thousands of times a second.
LEAN_OPERATIONS = frozenset({"searchCollection", "searchCollectionBatch", "getVector", "upsertVectors"})

_JSON = b"application/json"


@dataclass(frozen=True)
class _Route:
    pattern: re.Pattern[str]
    template: str  # scope["path_template"], as Litestar's router sets it
    handler: HTTPRouteHandler
    operation: str
    guard: RequiresGuard
    # Paths of other routes that this one's pattern also matches: Litestar's router prefers a
    # fixed segment to a parameter (GET .../vectors/delete is the deleteVectors route's, 405).
    shadowed_by: tuple[re.Pattern[str], ...]
    body: BodySpec | None
    # The handler's arguments that need no request (the services), from the app's providers.
    constants: dict[str, Any]
    tenant_argument: str
    status: int
    openai_compatible: bool


def _pattern(route: HTTPRoute) -> re.Pattern[str]:
    """The route's path as a regex for fullmatch: each {name} one segment, as Litestar's router
    matches it."""
    pieces = re.split(r"\{(\w+)\}", route.path_format)
    return re.compile(
        "".join(f"(?P<{piece}>[^/]+)" if i % 2 else re.escape(piece) for i, piece in enumerate(pieces))
    )


def _lean_route(route: HTTPRoute, handler: HTTPRouteHandler, others: list[HTTPRoute]) -> _Route:
    operation = handler.operation_id
    if not isinstance(operation, str):
        raise ValueError(f"lean path: {handler.handler_name} has no fixed operation id")
    guards = handler.resolve_guards()
    if len(guards) != 1 or not isinstance(guards[0], RequiresGuard):
        raise ValueError(f"lean path: {handler.operation_id} must have exactly one `requires` guard")
    # The app's before_request hook (service.app.check_request: unknown query parameters, strict
    # bodies) is what _match (no query string) and decode_strictly do here; later hooks are not run.
    if any(layer.after_request for layer in handler.ownership_layers) or handler.resolve_after_response():
        raise ValueError(f"lean path: {handler.operation_id} has after-hooks the lean path does not run")
    middleware = {getattr(m, "middleware", m) for m in handler.resolve_middleware()}
    if not middleware <= {BearerAuthMiddleware, TenantLimitsMiddleware}:
        raise ValueError(f"lean path: {handler.operation_id} has middleware the lean path does not run")
    providers = handler.resolve_dependencies()
    constants: dict[str, Any] = {}
    tenant_argument = ""
    path_names = set(route.path_parameters)
    for name in handler.parsed_fn_signature.parameters:
        if name in path_names or name == "data":
            continue
        if name == "tenant":
            tenant_argument = name
            continue
        provider = providers.get(name)
        if provider is None or inspect.signature(provider.dependency).parameters:
            raise ValueError(f"lean path: {handler.operation_id} takes {name!r}, which needs the request")
        constants[name] = provider.dependency()
    if not tenant_argument:
        raise ValueError(f"lean path: {handler.operation_id} does not take the tenant")
    for parameter in route.path_parameters.values():
        if parameter.type is not str:
            raise ValueError(f"lean path: {route.path} has a path parameter that is not a str")
    pattern = _pattern(route)
    return _Route(
        pattern=pattern,
        shadowed_by=tuple(
            _pattern(other) for other in others if other is not route and pattern.fullmatch(other.path_format)
        ),
        template=route.path_format,
        handler=handler,
        operation=operation,
        guard=guards[0],
        body=body_spec(handler),
        constants=constants,
        tenant_argument=tenant_argument,
        status=handler.status_code,
        openai_compatible=bool(handler.opt.get(OPENAI_COMPATIBLE)),
    )


class LeanPath:
    def __init__(
        self,
        app: Litestar,
        next_app: ASGIApp,
        *,
        authenticator: Authenticator,
        requests: TenantRequests,
        max_body_bytes: int,
        operations: frozenset[str] = LEAN_OPERATIONS,
    ) -> None:
        self.next_app = next_app
        self.authenticator = authenticator
        self.requests = requests
        self.max_body_bytes = max_body_bytes
        # method -> its lean routes
        self.routes: dict[str, list[_Route]] = {}
        found = set()
        # Litestar wraps its router in these; the lean path, in front of it, would skip them.
        if app.cors_config is not None or "OpenTelemetryPlugin" in {type(p).__name__ for p in app.plugins}:
            raise ValueError("lean path: the app has CORS or OpenTelemetry, which the lean path would skip")
        http_routes = [route for route in app.routes if isinstance(route, HTTPRoute)]
        for route in http_routes:
            for handler in route.route_handlers:
                if handler.operation_id in operations:
                    lean = _lean_route(route, handler, http_routes)
                    for method in handler.http_methods:
                        self.routes.setdefault(method, []).append(lean)
                    found.add(handler.operation_id)
        if missing := operations - found:
            raise ValueError(f"lean path: no route has the operation(s) {sorted(missing)}")

    def _match(self, scope: HTTPScope) -> tuple[_Route, dict[str, str]] | None:
        routes = self.routes.get(scope["method"])
        if routes is None or scope.get("query_string") or scope.get("root_path"):
            return None
        path = scope["path"]
        for route in routes:
            matched = route.pattern.fullmatch(path)
            if matched is not None:
                if any(shadow.fullmatch(path) for shadow in route.shadowed_by):
                    return None  # another route's own path: Litestar's to answer
                return route, matched.groupdict()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = self._match(scope) if scope["type"] == ScopeType.HTTP else None
        if matched is None:
            await self.next_app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        forwarded: list[str] = []
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded.append(value.decode("latin-1"))
            else:
                headers.setdefault(name, value)
        host = headers.get(b"host")
        if host is not None and not is_valid_host(host):
            await self.next_app(scope, receive, send)  # Litestar's router refuses it, in its words
            return
        route, path_params = matched
        scope["route_handler"] = route.handler
        scope["path_template"] = route.template
        scope["path_params"] = path_params
        try:
            body = await self._serve(scope, receive, route, path_params, headers, forwarded)
        except Exception as exc:  # every failure as the problem plugin renders it
            problem = problem_of(exc, self.max_body_bytes)
            document = problem.document(
                scope["path"],
                scope.get("state", {}).get("request_id"),
                openai_compatible=route.openai_compatible,
            )
            await _respond(
                send,
                problem.status_code,
                encode_json(document),
                PROBLEM_MEDIA_TYPE.encode(),
                problem.headers,
            )
            return
        await _respond(send, route.status, body, _JSON, None)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        route: _Route,
        path_params: dict[str, str],
        headers: dict[bytes, bytes],
        forwarded: list[str],
    ) -> bytes:
        authorization = headers.get(b"authorization")
        client = scope.get("client")
        principal: Principal = await authenticate_headers(
            self.authenticator,
            authorization.decode("latin-1") if authorization is not None else None,
            client[0] if client else None,
            forwarded,
        )
        scope["user"] = principal  # for the access log, as the middleware leaves it
        scope["auth"] = self.authenticator
        # Litestar's order: the limits middleware, then the route's guard, then the body.
        await self.requests.admit(principal, route.operation)
        tenant = await route.guard.admit(self.authenticator, principal, route.handler)
        arguments: dict[str, Any] = {**route.constants, **path_params, route.tenant_argument: tenant}
        if route.body is not None:
            content_type = headers.get(b"content-type")
            check_content_type(content_type.decode("latin-1") if content_type is not None else None)
            arguments["data"] = decode_strictly(route.body, await self._body(receive, headers))
        result = await route.handler.fn(**arguments)
        return encode_json(result, route.handler.default_serializer)

    async def _body(self, receive: Receive, headers: dict[bytes, bytes]) -> bytes:
        """The whole body within the app's limit (413 as Litestar answers it)."""
        limit = self.max_body_bytes or math.inf
        announced = headers.get(b"content-length")
        if announced is not None and announced.isdigit() and int(announced) > limit:
            raise RequestEntityTooLarge
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                if chunk:
                    size += len(chunk)
                    if size > limit:
                        raise RequestEntityTooLarge
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
            elif message["type"] == "http.disconnect":
                raise InternalServerException("client disconnected prematurely")


async def _respond(
    send: Send, status: int, body: bytes, media_type: bytes, extra: dict[str, str] | None
) -> None:
    headers = [(b"content-type", media_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items())
    start: Message = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})
