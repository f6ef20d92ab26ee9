"""Refuse query parameters a route does not declare: a misspelt `limt=5` or `include_vectors=true`
would otherwise be ignored without a word."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.handlers.base import BaseRouteHandler
from litestar.params import QueryParameter

from service.errors import InvalidRequest

# Kept on the handler itself (its opt mapping), not by id(): an id is reused once its app is gone.
_DECLARED = "_vectorhive_query_parameters"


def _declared_query_parameters(handler: BaseRouteHandler) -> frozenset[str]:
    names: frozenset[str] | None = handler.opt.get(_DECLARED)
    if names is None:
        names = frozenset(
            (getattr(field.kwarg_definition, "name", None) or field.kwarg_definition.query or name)
            for name, field in handler.parsed_fn_signature.parameters.items()
            if isinstance(field.kwarg_definition, QueryParameter)
        )
        handler.opt[_DECLARED] = names
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
