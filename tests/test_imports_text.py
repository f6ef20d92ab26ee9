"""Imports into a text collection (one with an embedding model) leave its documents' chunks alone."""

from __future__ import annotations

from tests.conftest import bearer
from tests.support.imports import Imports
from tests.support.imports import import_server_fixture as import_server_fixture  # the fixtures
from tests.support.imports import imports_fixture as imports_fixture


async def test_imports_into_a_text_collection_leave_its_documents_alone(
    imports: Imports,
) -> None:
    from tests.test_embeddings_api import MODEL, wait_for_model

    tenant = await imports.tenant()
    key = bearer(tenant.admin)
    await wait_for_model(imports.http, tenant.admin)
    made = await imports.http.post(
        "/api/v1/collections", json={"name": "kb", "embedding": {"model": MODEL}}, headers=key
    )
    assert made.status_code == 201, made.text
    stored = await imports.http.post(
        "/api/v1/collections/kb/documents",
        json={"documents": [{"id": "doc", "text": "Sourdough rises slowly overnight."}]},
        headers=key,
    )
    assert stored.status_code == 200, stored.text
    before = await imports.all_vectors(tenant.admin, "kb")
    # Ids shaped like chunk ids would overwrite the document's chunks: refused, nothing written.
    chunk_like = imports.published(n=20, dimensions=384, id_format="doc#{i}")
    failed = await imports.import_and_wait(tenant.admin, "kb", chunk_like)
    assert failed["status"] == "error" and failed["error"]["code"] == "invalid_manifest", failed
    assert await imports.all_vectors(tenant.admin, "kb") == before
    # Plain vectors live beside the chunks; text search still finds the document.
    plain = imports.published(n=20, dimensions=384)
    assert (await imports.import_and_wait(tenant.admin, "kb", plain))["status"] == "loaded"
    assert (await imports.http.get("/api/v1/collections/kb", headers=key)).json()["vector_count"] == 21
    found = await imports.http.post(
        "/api/v1/collections/kb/search", json={"text": "bread dough", "top_k": 1}, headers=key
    )
    assert found.json()["results"][0]["document_id"] == "doc"
