"""The exception tree, and how the OpenAPI document describes what it renders as.

Services raise ServiceError subclasses; service.problems renders them, Litestar's own HTTP
exceptions (validation, routing, 405, ...) and anything unexpected as one shape, RFC 9457
application/problem+json:

    {"type": "urn:vectorhive:problem:<code>", "title": ..., "status": ..., "detail": ...,
     "code": "<code>", "instance": "<path>", "request_id": ..., "errors": [{"field", "message"}]?}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
import msgspec
from litestar.openapi.datastructures import ResponseSpec

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:vectorhive:problem:"
# Route option (opt={OPENAI_COMPATIBLE: True}) of endpoints that OpenAI's clients call.
OPENAI_COMPATIBLE = "openai_compatible"


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


# Raised when PostgreSQL restarts, crashes or is unreachable: connections cut, refused, a socket
# that is gone, "the database system is starting up / shutting down", a pool being replaced.
_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # ConnectionDoesNotExistError, ConnectionFailureError, ...
    asyncpg.exceptions.OperatorInterventionError,  # CannotConnectNow, AdminShutdown, CrashShutdown
    asyncpg.exceptions.TooManyConnectionsError,
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
        if isinstance(current, _OUTAGE_ERRORS) or _is_lost_connection(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_lost_connection(exc: BaseException) -> bool:
    """asyncpg's InterfaceError says both "connection is closed" / "pool is closing" / "released
    connection" (an outage: 503) and "the server expects 2 arguments, 3 were passed" (a bug in
    this service: 500, not a 503 that tells the client to retry). Only the former mention one."""
    if not isinstance(exc, asyncpg.InterfaceError) or isinstance(exc, asyncpg.DataError):
        return False
    message = str(exc).lower()
    return "connection" in message or "pool" in message


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
