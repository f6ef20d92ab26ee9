"""openapi/openapi.json is exactly what `vectorhive openapi` prints for the current app."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from service.app import create_app
from service.commands.tools import openapi_json
from service.config import load_settings

REPO = Path(__file__).resolve().parent.parent
EXPORTED = REPO / "openapi" / "openapi.json"


def current_document(tmp_path: Path) -> str:
    return openapi_json(create_app(load_settings(environ={}, cwd=tmp_path)))


def test_exported_document_matches_the_app(tmp_path: Path) -> None:
    assert EXPORTED.read_text() == current_document(tmp_path), (
        "openapi/openapi.json is stale: regenerate it with `vectorhive openapi > openapi/openapi.json`"
    )


def test_cli_prints_the_same_document(tmp_path: Path) -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "service.cli", "openapi"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == current_document(tmp_path)


def test_every_operation_has_an_id_and_documents_its_errors(tmp_path: Path) -> None:
    document = json.loads(current_document(tmp_path))
    ids = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation.get("operationId"), f"{method} {path} has no operationId"
            ids.append(operation["operationId"])
            # Operations that take no API key (security: [{}], e.g. the sessions' public keys) need not.
            if path.startswith("/api/") and operation.get("security") != [{}]:
                for status in ("401", "403"):
                    response = operation["responses"][status]
                    assert "application/problem+json" in response["content"], f"{method} {path} {status}"
    assert len(ids) == len(set(ids))
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_operations_that_need_the_database_document_503_and_limited_ones_429(tmp_path: Path) -> None:
    """A client generated from the document must expect database_unavailable (a restart, an
    outage) and rate limiting on every authenticated operation, not only where a route says so."""
    document = json.loads(current_document(tmp_path))
    checked = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            public = operation.get("security") == [{}]
            if public and path != "/readyz":
                continue  # /healthz answers from the process alone, without the database
            expected = ("503",) if public else ("429", "503")
            for status in expected:
                response = operation["responses"].get(status)
                assert response is not None, f"{method.upper()} {path} does not document {status}"
                assert "application/problem+json" in response["content"], f"{method} {path} {status}"
                assert "Retry-After" in response["description"], f"{method} {path} {status}"
            if not public:
                assert "database_unavailable" in operation["responses"]["503"]["description"]
            checked += 1
    assert checked > 30  # every authenticated operation, not a handful


async def test_the_api_reference_is_served_without_a_cdn(client: Any) -> None:
    docs = await client.get("/docs", follow_redirects=False)
    assert docs.status_code in (301, 302, 307, 308) and docs.headers["location"] == "/schema/swagger"
    page = await client.get("/schema/swagger")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js"):
        assert f"/schema/assets/{asset}" in page.text
        served = await client.get(f"/schema/assets/{asset}")
        assert served.status_code == 200 and len(served.content) > 1000
    assert (await client.get("/schema")).status_code == 200
