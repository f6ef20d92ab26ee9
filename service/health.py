"""Liveness and readiness; no key needed."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, get

from service import __version__
from service.db import Database
from service.errors import ServiceUnavailable, problem_responses


class Health(msgspec.Struct, kw_only=True):
    status: str
    version: str


class HealthController(Controller):
    tags = ["health"]
    security: list[dict[str, list[str]]] = [{}]

    @get("/healthz", operation_id="getHealth", summary="The process is up")
    async def healthz(self) -> Health:
        return Health(status="ok", version=__version__)

    @get(
        "/readyz",
        operation_id="getReadiness",
        responses=problem_responses(503),
        summary="The database is reachable",
    )
    async def readyz(self, request: Request[Any, Any, Any]) -> Health:
        db: Database = request.app.state.db
        try:
            await db.ping()
        except Exception as exc:
            raise ServiceUnavailable(
                f"The database is not reachable ({type(exc).__name__}).",
                headers={"Retry-After": "2"},
            ) from exc
        return Health(status="ready", version=__version__)
