"""Liveness and readiness; no key needed."""

from __future__ import annotations

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency

from service import __version__
from service.db import Database
from service.errors import ServiceUnavailable, problem_responses


class Health(msgspec.Struct, kw_only=True):
    status: str
    version: str


class Readiness:
    """Whether this process can serve requests: its database answers."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def check(self) -> None:
        try:
            await self.db.ping()
        except Exception as exc:
            raise ServiceUnavailable(
                f"The database is not reachable ({type(exc).__name__}).",
                headers={"Retry-After": "2"},
            ) from exc


class HealthController(Controller):
    tags = ["health"]
    security: list[dict[str, list[str]]] = [{}]

    @get("/healthz", operation_id="getHealth", summary="The process is up")
    async def healthz(self) -> Health:
        return Health(status="ok", version=__version__)

    @get(
        "/readyz",
        operation_id="getReadiness",
        responses=problem_responses(ServiceUnavailable),
        summary="The database is reachable",
    )
    async def readyz(self, readiness: NamedDependency[Readiness]) -> Health:
        await readiness.check()
        return Health(status="ready", version=__version__)
