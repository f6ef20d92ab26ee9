"""Request context: a request id accepted or generated and echoed, and one access-log line per request.

Plain ASGI so that it wraps everything, including authentication failures and routing errors.
It runs on every request, so it is kept lean (measured, docs/benchmarks.md "Lean hot path"): the
request id is 16 random bytes in hex (uuid4's own entropy, without the UUID object), the latency
histogram's labelled children are looked up once per (method, route, status class), and the access
line is handed to the logging handlers without logging's caller lookup (a stack walk nobody reads).
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import REQUEST_SECONDS

REQUEST_ID_HEADER = b"x-request-id"
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:-]{1,128}")

access_log = logging.getLogger("vectorhive.access")


# Metric labels stay bounded: a client may send any token as its method.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _write_access_line(fields: dict[str, Any]) -> None:
    """access_log.info("request", extra=fields), without logging's findCaller (a stack walk)."""
    if access_log.isEnabledFor(logging.INFO):
        record = access_log.makeRecord(
            access_log.name, logging.INFO, "", 0, "request", (), None, extra=fields
        )
        access_log.handle(record)


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, access_log_enabled: bool = True) -> None:
        self.app = app
        self.access_log_enabled = access_log_enabled
        # (method, route, status class) -> the histogram's child: bounded by routes x methods x 5.
        self._latency: dict[tuple[str, str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return

        request_id = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                candidate = value.decode("latin-1")
                if _REQUEST_ID_OK.fullmatch(candidate):
                    request_id = candidate
                break
        if request_id is None:
            request_id = os.urandom(16).hex()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (REQUEST_ID_HEADER, request_id.encode("latin-1"))
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("path_template") or "<unmatched>"
            method = scope.get("method", "")
            labels = (method if method in _KNOWN_METHODS else "OTHER", route, f"{status // 100}xx")
            latency = self._latency.get(labels)
            if latency is None:
                latency = self._latency[labels] = REQUEST_SECONDS.labels(*labels)
            latency.observe(elapsed)
            if self.access_log_enabled:
                principal = scope.get("user")
                _write_access_line(
                    {
                        "request_id": request_id,
                        "method": scope.get("method"),
                        # The route template, not the raw path: raw paths can carry ids of other tenants.
                        "route": scope.get("path_template") or scope["path"],
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                        "tenant_id": getattr(principal, "tenant_id", None),
                        "key_id": getattr(principal, "key_id", None),
                    }
                )
