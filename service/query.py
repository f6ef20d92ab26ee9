"""Refuse query parameters a route does not declare: a misspelt `limt=5` or `include_vectors=true`
would otherwise be ignored without a word."""

from __future__ import annotations

import weakref
from typing import Any

from litestar import Request
from litestar.handlers.base import BaseRouteHandler
from litestar.params import QueryParameter

from service.errors import InvalidRequest

# Keyed by the handler itself, weakly (an id() is reused once its handler's app is gone).
_declared: weakref.WeakKeyDictionary[BaseRouteHandler, frozenset[str]] = weakref.WeakKeyDictionary()


def _declared_query_parameters(handler: BaseRouteHandler) -> frozenset[str]:
    names = _declared.get(handler)
    if names is None:
        names = frozenset(
            (getattr(field.kwarg_definition, "name", None) or field.kwarg_definition.query or name)
            for name, field in handler.parsed_fn_signature.parameters.items()
            if isinstance(field.kwarg_definition, QueryParameter)
        )
        _declared[handler] = names
    return names


async def reject_unknown_query_parameters(request: Request[Any, Any, Any]) -> None:
    """A before_request hook; costs nothing for requests without a query string."""
    if not request.scope.get("query_string") or request.url.path.startswith("/schema"):
        return
    unknown = sorted(set(request.query_params) - _declared_query_parameters(request.route_handler))
    if unknown:
        allowed = sorted(_declared_query_parameters(request.route_handler))
        raise InvalidRequest(
            f"Unknown query parameter(s): {', '.join(repr(u) for u in unknown)}; "
            f"this endpoint takes {', '.join(allowed) if allowed else 'none'}.",
            errors=[{"field": name, "source": "query", "message": "unknown parameter"} for name in unknown],
        )
