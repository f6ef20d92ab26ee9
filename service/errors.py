"""The exception tree and its one rendering: RFC 9457 application/problem+json.

Services raise ServiceError subclasses; Litestar's own HTTP exceptions (validation, routing,
405, ...) and anything unexpected are mapped onto the same shape by problem_details_plugin():

    {"type": "urn:vectorhive:problem:<code>", "title": ..., "status": ..., "detail": ...,
     "code": "<code>", "instance": "<path>", "request_id": ..., "errors": [{"field", "message"}]?}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsException,
    ProblemDetailsPlugin,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:vectorhive:problem:"
# Route option (opt={OPENAI_COMPATIBLE: True}) of endpoints that OpenAI's clients call.
OPENAI_COMPATIBLE = "openai_compatible"

log = logging.getLogger("vectorhive.errors")


class ServiceError(Exception):
    """A failure the client should be told about. Subclasses fix status, code and title."""

    status = 400
    code = "invalid_request"
    title = "The request is invalid"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.errors = errors
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


class InvalidRequest(ServiceError):
    @classmethod
    def field(
        cls, field: str | None, message: str, detail: str, *, source: str = "body", code: str | None = None
    ) -> InvalidRequest:
        """The one shape of a 400 about one part of the request: `detail` for people, and
        errors=[{field, source, message}] for programs (field None: the body or query as a whole)."""
        error = {"source": source, "message": message}
        if field is not None:
            error = {"field": field, **error}
        return cls(detail, code=code, errors=[error])


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"
    title = "Authentication is required"

    def __init__(self, detail: str, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="vectorhive"'})
        super().__init__(detail, **kwargs)


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"
    title = "Not allowed"


class NotFound(ServiceError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"
    title = "Conflict with the current state"


class QuotaExceeded(Forbidden):
    """A storage quota (collections, vectors, bytes, dimension) would be exceeded: nothing was written."""

    code = "quota_exceeded"
    title = "Quota exceeded"

    def __init__(self, detail: str, *, quota: str, limit: int, current: int, requested: int) -> None:
        super().__init__(
            detail, extra={"quota": quota, "limit": limit, "current": current, "requested": requested}
        )
        self.quota = quota


class TooManyRequests(ServiceError):
    """A rate limit or the request-cost token bucket is exhausted; the headers say when to come back."""

    status = 429
    code = "rate_limited"
    title = "Too many requests"

    def __init__(
        self,
        detail: str,
        *,
        limit_name: str,
        scope: str,
        value: float,
        retry_after: float,
        remaining: float = 0,
    ) -> None:
        wait = max(1, int(retry_after + 0.999))
        headers = {
            "Retry-After": str(wait),
            "RateLimit-Limit": _number(value),
            "RateLimit-Remaining": _number(max(0.0, remaining)),
            "RateLimit-Reset": str(wait),
        }
        super().__init__(detail, headers=headers, extra={"limit": limit_name, "scope": scope, "value": value})
        self.limit_name = limit_name


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class ServiceUnavailable(ServiceError):
    status = 503
    code = "unavailable"
    title = "Temporarily unavailable"


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
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_PREFIX + self.code,
            "title": self.title,
            "status": self.status_code,
            "detail": self.detail,
            "code": self.code,
            "instance": request.url.path,
        }
        request_id = request.scope.get("state", {}).get("request_id")
        if request_id:
            body["request_id"] = request_id
        if self.errors:
            body["errors"] = self.errors
        body.update(self.members)
        handler = request.scope.get("route_handler")
        if handler is not None and handler.opt.get(OPENAI_COMPATIBLE):
            # OpenAI's clients show error.message (and nothing of a problem document): the same
            # problem, also in the shape they read.
            body["error"] = {
                "message": self.detail,
                "type": self.code,
                "code": self.code,
                "param": self.errors[0].get("field") if self.errors else None,
            }
        return Response(
            body, status_code=self.status_code, headers=self.headers, media_type=PROBLEM_MEDIA_TYPE
        )


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


# Raised when PostgreSQL restarts, crashes or is unreachable: connections cut, refused, a socket
# that is gone, "the database system is starting up / shutting down", a pool being replaced.
_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # ConnectionDoesNotExistError, ConnectionFailureError, ...
    asyncpg.exceptions.OperatorInterventionError,  # CannotConnectNow, AdminShutdown, CrashShutdown
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.InterfaceError,  # "connection is closed", "pool is closing", released connections
    # A pooled connection whose server went away mid-protocol ("cannot switch to state ..."); the
    # pool discards it, so a retry gets a fresh one.
    asyncpg.exceptions.InternalClientError,
    OSError,  # ConnectionRefusedError, a missing unix socket (FileNotFoundError), resets
    TimeoutError,  # connecting or a statement timed out: the database is not answering
)


def is_database_outage(exc: BaseException) -> bool:
    """Whether exc (or what caused it) says that the database cannot be reached right now."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _OUTAGE_ERRORS):
            return True
        current = current.__cause__ or current.__context__
    return False


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


class ProblemDocument(msgspec.Struct, kw_only=True):
    """The schema of every error body (RFC 9457 plus our extension members), for the OpenAPI document."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str
    request_id: str | None = None
    errors: list[dict[str, str]] | None = None
    # On OpenAI-compatible endpoints only: {message, type, code, param}, as OpenAI's clients read it.
    error: dict[str, str | None] | None = None


_STATUS_TEXT = {
    400: "Invalid request (problem+json; `errors` names the fields)",
    401: "Missing, malformed, unknown, expired or revoked API key",
    403: "The key may not do this (permission, key kind, suspended tenant), or a quota would be exceeded",
    404: "Not found (also what another tenant's resources look like)",
    409: "Conflict with the current state",
    429: (
        "A rate limit or the request-cost budget is exhausted, or too many failed authentications "
        "came for this key id or from this address (Retry-After, RateLimit-* headers)"
    ),
    503: (
        "A dependency is unavailable; Retry-After says when to retry one that is down for now. "
        "`database_unavailable`: the "
        "database is restarting or unreachable (any operation that reads or writes it, authentication "
        "of a key not yet cached included); other codes name the feature's own dependency"
    ),
}


def problem_responses(*errors: type[ServiceError] | int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the errors a route can answer with: the ServiceError classes it raises
    (their status is taken from the class), or bare statuses (being replaced by classes)."""
    statuses = [error if isinstance(error, int) else error.status for error in errors]
    return {
        status: ResponseSpec(
            data_container=ProblemDocument,
            description=_STATUS_TEXT[status],
            media_type=PROBLEM_MEDIA_TYPE,
            generate_examples=False,
        )
        for status in statuses
    }


# What any authenticated operation may answer: authentication can be refused (401, 403), limited
# before it runs argon2 or by the tenant's rate limits (429), and needs the database for a key not
# yet cached, as does every operation behind it (503 database_unavailable).
AUTHENTICATED: tuple[type[ServiceError], ...] = (
    InvalidRequest,
    Unauthorized,
    Forbidden,
    TooManyRequests,
    ServiceUnavailable,
)


def problem_of(exc: Exception) -> Problem:
    """The problem an exception renders as, outside Litestar's handlers (MCP tool errors use it so
    that a tool fails with the same code and detail as the REST operation it mirrors)."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, ServiceError):
        return _from_service_error(exc)
    if isinstance(exc, HTTPException):
        return _from_http_exception(exc)
    if isinstance(exc, asyncpg.DataError):
        return _from_database_data_error(exc)
    if isinstance(exc, asyncpg.TransactionRollbackError):
        return _from_transaction_rollback(exc)
    return _from_unexpected(exc)
