"""The one rendering of every failure: RFC 9457 application/problem+json (see service.errors).

ServiceError subclasses, Litestar's own HTTP exceptions (validation, routing, 405, ...), the
database's refusals and outages, and anything unexpected are mapped onto the same shape by
problem_details_plugin(); problem_of() gives the same mapping outside Litestar's handlers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsException,
    ProblemDetailsPlugin,
)

from service.errors import (
    OPENAI_COMPATIBLE,
    PROBLEM_MEDIA_TYPE,
    PROBLEM_TYPE_PREFIX,
    ServiceError,
    is_database_outage,
)

log = logging.getLogger("vectorhive.errors")

# Litestar's own exceptions, by status: (code, title).
_HTTP_CODES: dict[int, tuple[str, str]] = {
    400: ("invalid_request", "The request is invalid"),
    401: ("unauthorized", "Authentication is required"),
    403: ("forbidden", "Not allowed"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    409: ("conflict", "Conflict with the current state"),
    413: ("payload_too_large", "The request body is too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    429: ("rate_limited", "Too many requests"),
    500: ("internal_error", "Internal server error"),
    503: ("unavailable", "Temporarily unavailable"),
}


class Problem(ProblemDetailsException):
    """The rendered form; carries everything to_response needs."""

    def __init__(
        self,
        *,
        status: int,
        code: str,
        title: str,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail=detail, status_code=status, headers=dict(headers or {}), title=title)
        self.code = code
        self.errors = errors
        self.members = dict(extra or {})

    def to_response(self, request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        handler = request.scope.get("route_handler")
        body = self.document(
            request.url.path,
            request.scope.get("state", {}).get("request_id"),
            openai_compatible=handler is not None and bool(handler.opt.get(OPENAI_COMPATIBLE)),
        )
        return Response(
            body, status_code=self.status_code, headers=self.headers, media_type=PROBLEM_MEDIA_TYPE
        )

    def document(self, instance: str, request_id: str | None, *, openai_compatible: bool) -> dict[str, Any]:
        """The problem+json body (also sent by the lean path, service.lean_path)."""
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_PREFIX + self.code,
            "title": self.title,
            "status": self.status_code,
            "detail": self.detail,
            "code": self.code,
            "instance": instance,
        }
        if request_id:
            body["request_id"] = request_id
        if self.errors:
            body["errors"] = self.errors
        body.update(self.members)
        if openai_compatible:
            # OpenAI's clients show error.message (and nothing of a problem document): the same
            # problem, also in the shape they read.
            body["error"] = {
                "message": self.detail,
                "type": self.code,
                "code": self.code,
                "param": self.errors[0].get("field") if self.errors else None,
            }
        return body


def _from_service_error(exc: ServiceError) -> Problem:
    return Problem(
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        errors=exc.errors,
        headers=exc.headers,
        extra=exc.extra,
    )


def _validation_errors(exc: ValidationException) -> list[dict[str, Any]] | None:
    if not isinstance(exc.extra, list):
        return None
    errors = []
    for item in exc.extra:
        if isinstance(item, Mapping):
            entry = {"message": str(item.get("message", ""))}
            if item.get("key"):
                entry["field"] = str(item["key"])
            if item.get("source"):
                # Litestar gives an enum member for parameters (ParamType.QUERY): its value is the name.
                source = item["source"]
                entry["source"] = str(getattr(source, "value", source))
            errors.append(entry)
    return errors or None


def _first_problem(errors: list[dict[str, Any]]) -> str:
    """Litestar's "Validation failed for GET /x?limit=y" says nothing: the detail names the first problem."""
    first = errors[0]
    where = first.get("field")
    if where and first.get("source") in ("query", "path", "header", "cookie"):
        where = f"{first['source']} parameter {where}"
    return f"{where}: {first['message']}" if where else first["message"]


def _from_request_validation(error: msgspec.ValidationError) -> Problem:
    """msgspec's "Expected `array | null`, got `object` - at `$.data.collections`" as a 400."""
    text, _, path = str(error).partition(" - at `")
    location = path.rstrip("`").removeprefix("$").lstrip(".")
    entry = {"message": text}
    if location.startswith("data"):
        location = location.removeprefix("data").lstrip(".")
        entry["source"] = "body"
    if location:
        entry["field"] = location
    where = f" at {location}" if location else ""
    return Problem(
        status=400,
        code="invalid_request",
        title="The request is invalid",
        detail=f"Validation failed{where}: {text}",
        errors=[entry],
    )


def _from_http_exception(exc: HTTPException, max_body_bytes: int | None = None) -> Problem:
    if exc.status_code == 500 and isinstance(exc.__cause__, msgspec.ValidationError):
        # Litestar's fallback for some nested validation failures (re-checking field by field)
        # finds nothing and raises a bare 500; the cause says what was wrong with the request.
        return _from_request_validation(exc.__cause__)
    status = exc.status_code
    code, title = _HTTP_CODES.get(status, ("error", "Error"))
    detail = exc.detail or title
    errors = _validation_errors(exc) if isinstance(exc, ValidationException) else None
    if errors:
        detail = _first_problem(errors)
    if isinstance(exc.__cause__, SerializationException):
        detail = f"The request body is not valid JSON: {exc.detail}"
    if status == 413 and max_body_bytes is not None:
        detail = f"The request body is larger than the limit of {max_body_bytes:,} bytes."
    if status >= 500:
        log.error(
            "server error raised by the framework",
            extra={"status": status, "detail": exc.detail},
            exc_info=exc,
        )
    if status == 500:
        # Litestar's 500s may carry internal text; clients get the generic sentence.
        detail = "An unexpected error occurred; quote the request_id when reporting it."
    return Problem(status=status, code=code, title=title, detail=detail, errors=errors, headers=exc.headers)


def _from_database_data_error(exc: asyncpg.DataError) -> Problem:
    """PostgreSQL refused a value the request carried (e.g. a NUL character in text)."""
    return Problem(
        status=400,
        code="invalid_request",
        title="The request is invalid",
        detail=f"The request contains a value the database cannot store: {exc.args[0] if exc.args else exc}",
    )


def _from_transaction_rollback(exc: asyncpg.TransactionRollbackError) -> Problem:
    """A deadlock or serialization failure with a concurrent request: nothing was written."""
    log.warning("transaction rolled back by the database", extra={"sqlstate": exc.sqlstate})
    return Problem(
        status=409,
        code="concurrent_conflict",
        title="Conflict with a concurrent request",
        detail="The request conflicted with a concurrent write and changed nothing; retry it.",
        headers={"Retry-After": "1"},
    )


def _from_database_outage(exc: Exception) -> Problem:
    log.warning(
        "database unavailable; answered 503",
        extra={"error": f"{type(exc).__name__}: {exc}"},
    )
    return Problem(
        status=503,
        code="database_unavailable",
        title="Temporarily unavailable",
        detail="The database is unavailable (restarting or unreachable); retry shortly.",
        headers={"Retry-After": "2"},
    )


def _from_unexpected(exc: Exception) -> Problem:
    if is_database_outage(exc):
        return _from_database_outage(exc)
    log.error("unhandled exception", exc_info=exc)
    return Problem(
        status=500,
        code="internal_error",
        title="Internal server error",
        detail="An unexpected error occurred; quote the request_id when reporting it.",
    )


def _handle_problem(request: Request[Any, Any, Any], exc: Problem) -> Response[dict[str, Any]]:
    return exc.to_response(request)


def problem_details_plugin(*, max_body_bytes: int | None = None) -> ProblemDetailsPlugin:
    """Litestar's problem-details plugin, with every exception class mapped onto one shape.

    max_body_bytes: the app's request_max_body_size, named in the 413 problem."""

    mapping: dict[type[Exception], Any] = {
        ServiceError: _from_service_error,
        HTTPException: lambda exc: _from_http_exception(exc, max_body_bytes),
        asyncpg.DataError: _from_database_data_error,
        asyncpg.TransactionRollbackError: _from_transaction_rollback,
        Exception: _from_unexpected,
    }
    return ProblemDetailsPlugin(
        ProblemDetailsConfig(exception_handler=_handle_problem, exception_to_problem_detail_map=mapping)
    )


def problem_of(exc: Exception, max_body_bytes: int | None = None) -> Problem:
    """The problem an exception renders as, outside Litestar's handlers (MCP tool errors use it so
    that a tool fails with the same code and detail as the REST operation it mirrors; the lean path
    for the same rendering as the plugin's)."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, ServiceError):
        return _from_service_error(exc)
    if isinstance(exc, HTTPException):
        return _from_http_exception(exc, max_body_bytes)
    if isinstance(exc, asyncpg.DataError):
        return _from_database_data_error(exc)
    if isinstance(exc, asyncpg.TransactionRollbackError):
        return _from_transaction_rollback(exc)
    return _from_unexpected(exc)
