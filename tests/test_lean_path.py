"""The lean path (service/lean_path.py) answers the hot routes exactly as the full Litestar stack
does: the same request goes to an app with it and to one without it, on the same database, and
the two responses must match (status, headers, body but for the request id and took_ms), for
successes and for every kind of refusal. It must also really serve those routes itself, with the
access line, the request counter and the tenant's limits."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from service.app import create_app
from service.lean_path import LEAN_OPERATIONS, LeanPath
from service.middleware import RequestContextMiddleware
from tests.conftest import MakeSettings, MakeTenant, TenantKeys, bearer, set_quotas

MAX_BODY = 100_000
JSON = "application/json"


@dataclass
class Pair:
    lean: AsyncTestClient[Litestar]
    full: AsyncTestClient[Litestar]


def _app(make_settings: MakeSettings, lean: bool) -> Litestar:
    return create_app(make_settings(server={"lean_path": lean}, collections={"max_batch_bytes": MAX_BODY}))


@pytest.fixture(scope="module")
async def pair(make_settings: MakeSettings) -> AsyncIterator[Pair]:
    lean_app, full_app = _app(make_settings, True), _app(make_settings, False)
    assert isinstance(lean_app.asgi_handler, RequestContextMiddleware)
    assert isinstance(lean_app.asgi_handler.app, LeanPath)
    assert not isinstance(full_app.asgi_handler.app, LeanPath)  # type: ignore[attr-defined]
    async with (
        AsyncTestClient(lean_app, raise_server_exceptions=False) as lean,
        AsyncTestClient(full_app, raise_server_exceptions=False) as full,
    ):
        yield Pair(lean, full)


def _comparable(response: Any) -> tuple[int, dict[str, str], Any]:
    # The request id and took_ms differ by nature (and with them the length).
    headers = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "content-length")}
    if "allow" in headers:  # Litestar lists the methods of a 405 in no fixed order
        headers["allow"] = ", ".join(sorted(m.strip() for m in headers["allow"].split(",")))
    body = response.json() if response.content else None
    if isinstance(body, dict):
        body.pop("request_id", None)
        body.pop("took_ms", None)
    return response.status_code, headers, body


async def same_answer(pair: Pair, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    lean = await pair.lean.request(method, path, **kwargs)
    full = await pair.full.request(method, path, **kwargs)
    assert _comparable(lean) == _comparable(full), (method, path, kwargs)
    if lean.status_code >= 400:
        assert lean.headers["content-type"] == "application/problem+json"
        assert lean.json()["request_id"] == lean.headers["x-request-id"]
    return lean.status_code, lean.json() if lean.content else None


async def tenant_with_collection(pair: Pair, make_tenant: MakeTenant, *permissions: str) -> TenantKeys:
    """A fresh tenant with keys of `permissions` and an empty collection "c" of dimension 3."""
    tenant = await make_tenant(*permissions)
    created = await pair.lean.post(
        "/api/v1/collections", json={"name": "c", "dimension": 3}, headers=bearer(tenant.admin)
    )
    assert created.status_code == 201, created.text
    return tenant


def lean_path_of(client: AsyncTestClient[Litestar]) -> LeanPath:
    lean = client.app.asgi_handler.app  # type: ignore[attr-defined]
    assert isinstance(lean, LeanPath)
    return lean


async def unreachable(scope: Any, receive: Any, send: Any) -> None:
    """Stands in for Litestar behind the lean path where the lean path must answer itself."""
    raise AssertionError(f"{scope['method']} {scope['path']} reached Litestar")


SEARCH = {"vector": [1.0, 0.0, 0.5], "top_k": 2}
SEARCH_PATH = "/api/v1/collections/c/search"
VECTORS_PATH = "/api/v1/collections/c/vectors"


async def test_successes_match_the_full_stack(pair: Pair, make_tenant: MakeTenant) -> None:
    tenant = await tenant_with_collection(pair, make_tenant, "read_only")
    admin = bearer(tenant.admin)
    items = [{"id": f"v{i}", "vector": [1.0, float(i), 0.5], "metadata": {"i": i}} for i in range(5)]
    status, body = await same_answer(
        pair, "PUT", "/api/v1/collections/c/vectors", json={"vectors": items}, headers=admin
    )
    assert status == 200 and body["upserted"] == 5
    status, body = await same_answer(
        pair,
        "PUT",
        "/api/v1/collections/c/vectors",
        json={"vectors": [{"id": "b", "vector_b64": "AACAPwAAAAAAAAA/"}]},  # [1, 0, 0.5] as float32
        headers=admin,
    )
    assert status == 200
    reader = bearer(tenant.key("read_only"))
    status, body = await same_answer(
        pair, "POST", "/api/v1/collections/c/search", json=SEARCH, headers=reader
    )
    assert status == 200 and {hit["id"] for hit in body["results"]} == {"b", "v0"}  # the same vector
    filtered = {**SEARCH, "filter": {"i": {"$gte": 3}}, "include_vector": True}
    status, body = await same_answer(
        pair, "POST", "/api/v1/collections/c/search", json=filtered, headers=reader
    )
    assert status == 200 and {hit["id"] for hit in body["results"]} == {"v3", "v4"}
    status, body = await same_answer(
        pair,
        "POST",
        "/api/v1/collections/c/search/batch",
        json={"queries": [SEARCH, filtered]},
        headers=reader,
    )
    assert status == 200 and len(body["results"]) == 2
    status, body = await same_answer(pair, "GET", "/api/v1/collections/c/vectors/v2", headers=reader)
    assert status == 200 and body["metadata"] == {"i": 2}
    # Percent-encoded ids arrive decoded, as Litestar's router sees them.
    status, _ = await same_answer(pair, "GET", "/api/v1/collections/c/vectors/v%32", headers=reader)
    assert status == 200


async def test_every_kind_of_refusal_matches_the_full_stack(
    pair: Pair, make_tenant: MakeTenant, operator_key: str
) -> None:
    tenant = await tenant_with_collection(pair, make_tenant, "read_only", "mcp")
    admin = bearer(tenant.admin)
    search = SEARCH_PATH
    refusals: list[tuple[str, str, dict[str, Any], int]] = [
        ("POST", search, {"json": SEARCH}, 401),  # no key
        ("POST", search, {"json": SEARCH, "headers": {"Authorization": "Basic abc"}}, 401),
        ("POST", search, {"json": SEARCH, "headers": bearer("vh_not_a_key_at_all")}, 401),
        ("POST", search, {"json": SEARCH, "headers": bearer(operator_key)}, 403),
        ("POST", search, {"json": SEARCH, "headers": bearer(tenant.key("mcp"))}, 403),
        (
            "PUT",
            "/api/v1/collections/c/vectors",
            {"json": {"vectors": []}, "headers": bearer(tenant.key("read_only"))},
            403,
        ),
        ("POST", "/api/v1/collections/nope/search", {"json": SEARCH, "headers": admin}, 404),
        ("GET", "/api/v1/collections/c/vectors/nope", {"headers": admin}, 404),
        ("GET", "/api/v1/collections/nope/vectors/v1", {"headers": admin}, 404),
        ("POST", search, {"content": b"", "headers": admin}, 400),
        (
            "POST",
            search,
            {"content": b"{not json", "headers": {**admin, "Content-Type": JSON}},
            400,
        ),
        ("POST", search, {"json": {"vector": [1, 0, 0], "top_k": "5"}, "headers": admin}, 400),
        ("POST", search, {"json": {**SEARCH, "topk": 5}, "headers": admin}, 400),
        ("POST", search, {"json": {"vector": [1, 0], "top_k": 2}, "headers": admin}, 400),
        ("POST", search, {"json": {"vector": [0, 0, 0], "top_k": 2}, "headers": admin}, 400),
        ("POST", search, {"content": b"vector=1", "headers": {**admin, "Content-Type": "text/plain"}}, 415),
        (
            "PUT",
            "/api/v1/collections/c/vectors",
            {
                "json": {"vectors": [{"id": "x", "vector": [1, 2, 3], "metadata": {"t": "x" * MAX_BODY}}]},
                "headers": admin,
            },
            413,
        ),
        (
            "PUT",
            "/api/v1/collections/c/vectors",
            {"json": {"vectors": [{"id": "a/b", "vector": [1, 2, 3]}]}, "headers": admin},
            400,
        ),
        # Not taken by the lean path (a query string, a trailing slash): Litestar answers both.
        ("POST", search + "?top_k=3", {"json": SEARCH, "headers": admin}, 400),
        ("POST", search + "/", {"json": {**SEARCH, "topk": 5}, "headers": admin}, 400),
        ("GET", "/api/v1/collections/c/vectors/v1?include_vector=true", {"headers": admin}, 400),
    ]
    # Litestar's answers (the lean path passes them on): a newline is not part of a path segment
    # it matches, and a fixed segment (.../vectors/delete, POST only) wins over {vector_id}.
    litestars = [
        ("POST", search + "%0A", {"json": SEARCH, "headers": admin}, 404),
        ("GET", "/api/v1/collections/c/vectors/delete", {"headers": admin}, 405),
    ]
    lean = lean_path_of(pair.lean)
    behind = lean.next_app
    for method, path, kwargs, expected in refusals + litestars:
        served_by_lean = "?" not in path and not path.endswith(("/", "%0A", "/delete"))
        lean.next_app = unreachable if served_by_lean else behind
        try:
            status, body = await same_answer(pair, method, path, **kwargs)
        finally:
            lean.next_app = behind
        assert status == expected, (method, path, body)
    # Nothing was written by any of them.
    count = (await pair.full.get("/api/v1/collections/c", headers=admin)).json()["vector_count"]
    assert count == 0


async def test_session_tokens_and_rate_limits_on_the_lean_path(
    pair: Pair, make_tenant: MakeTenant, operator_key: str
) -> None:
    tenant = await tenant_with_collection(pair, make_tenant)
    admin = bearer(tenant.admin)
    opened = await pair.lean.post("/api/v1/sessions", json={"collections": ["c"]}, headers=admin)
    assert opened.status_code == 201, opened.text
    token = bearer(opened.json()["token"])
    status, _ = await same_answer(pair, "POST", "/api/v1/collections/c/search", json=SEARCH, headers=token)
    assert status == 200
    status, body = await same_answer(
        pair, "PUT", "/api/v1/collections/c/vectors", json={"vectors": []}, headers=token
    )
    assert status == 403 and body["code"] == "insufficient_permission"  # a session only reads
    # A session's query budget is spent and checked on either path alike.
    for first, second in ((pair.lean, pair.full), (pair.full, pair.lean)):
        opened = await pair.lean.post(
            "/api/v1/sessions", json={"collections": ["c"], "max_queries": 1}, headers=admin
        )
        token = bearer(opened.json()["token"])
        assert (await first.post(SEARCH_PATH, json=SEARCH, headers=token)).status_code == 200
        spent = await second.post(SEARCH_PATH, json=SEARCH, headers=token)
        assert spent.status_code == 403 and spent.json()["code"] == "session_queries_exhausted"

    # Window limits: each app counts in its own memory, so both refuse the fourth request alike.
    limited = await make_tenant()
    await set_quotas(pair.full, operator_key, limited.tenant_id, requests_per_minute=3)
    key = bearer(limited.admin)
    answers = []
    for client in (pair.lean, pair.full):
        responses = [
            await client.post("/api/v1/collections/nope/search", json=SEARCH, headers=key) for _ in range(4)
        ]
        answers.append([r.status_code for r in responses])
        refused = responses[-1].json()
        assert refused["code"] == "rate_limited" and refused["limit"] == "requests_per_minute"
        assert int(responses[-1].headers["retry-after"]) >= 1
    assert answers[0] == answers[1] and answers[0][-1] == 429


async def test_the_lean_path_serves_the_hot_routes_itself(
    pair: Pair, make_tenant: MakeTenant, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = await tenant_with_collection(pair, make_tenant)
    admin = bearer(tenant.admin)
    lean = lean_path_of(pair.lean)
    behind = lean.next_app

    counted_before = REGISTRY.get_sample_value(
        "vectorhive_tenant_requests_total", {"tenant_id": tenant.tenant_id, "operation": "searchCollection"}
    )
    lean.next_app = unreachable
    try:
        with caplog.at_level(logging.INFO, logger="vectorhive.access"):
            upserted = await pair.lean.put(
                "/api/v1/collections/c/vectors",
                json={"vectors": [{"id": "a", "vector": [1, 2, 3]}]},
                headers=admin,
            )
            searched = await pair.lean.post("/api/v1/collections/c/search", json=SEARCH, headers=admin)
            batch = await pair.lean.post(
                "/api/v1/collections/c/search/batch", json={"queries": [SEARCH]}, headers=admin
            )
            got = await pair.lean.get("/api/v1/collections/c/vectors/a", headers=admin)
            missing = await pair.lean.post("/api/v1/collections/c/search", json=SEARCH)
    finally:
        lean.next_app = behind
    assert [r.status_code for r in (upserted, searched, batch, got, missing)] == [200, 200, 200, 200, 401]
    assert searched.json()["results"][0]["id"] == "a"
    lines = [r for r in caplog.records if r.name == "vectorhive.access"]
    routes = [(getattr(r, "route", None), getattr(r, "tenant_id", None)) for r in lines]
    assert ("/api/v1/collections/{name}/search", tenant.tenant_id) in routes
    assert ("/api/v1/collections/{name}/vectors/{vector_id}", tenant.tenant_id) in routes
    assert (
        REGISTRY.get_sample_value(
            "vectorhive_tenant_requests_total",
            {"tenant_id": tenant.tenant_id, "operation": "searchCollection"},
        )
        == (counted_before or 0) + 1
    )


def test_the_lean_path_refuses_routes_it_could_not_serve_alike(make_settings: MakeSettings) -> None:
    app = create_app(make_settings())
    lean = app.asgi_handler.app  # type: ignore[attr-defined]
    assert isinstance(lean, LeanPath)

    def lean_path_for(*operations: str) -> LeanPath:
        return LeanPath(
            app,
            lean.next_app,
            authenticator=lean.authenticator,
            requests=lean.requests,
            max_body_bytes=MAX_BODY,
            operations=frozenset(operations),
        )

    # listCollections takes query parameters (limit, cursor) that only Litestar parses.
    with pytest.raises(ValueError, match="needs the request"):
        lean_path_for("listCollections")
    with pytest.raises(ValueError, match="no route"):
        lean_path_for("noSuchOperation")
    assert {"searchCollection", "searchCollectionBatch", "getVector", "upsertVectors"} == LEAN_OPERATIONS
