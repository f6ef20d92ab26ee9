"""Every error class renders as the same RFC 9457 problem+json; request ids are accepted or made."""

from __future__ import annotations

from litestar import Litestar, get
from litestar.testing import AsyncTestClient

from service.app import create_app
from tests.conftest import MakeSettings, MakeTenant, assert_problem, bearer


async def test_validation_error_names_the_field(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    body = assert_problem(
        await client.post("/api/v1/keys", headers=bearer(tenant.admin), json={"permission": "superuser"}),
        400,
        "invalid_request",
    )
    assert body["errors"] == [
        {
            "message": "'superuser' is not one of the allowed values: admin, read_write, read_only, mcp",
            "field": "permission",
            "source": "body",
        }
    ]
    body = assert_problem(
        await client.post(
            "/api/v1/keys", headers=bearer(tenant.admin), json={"permission": "admin", "bogus": 1}
        ),
        400,
    )
    assert "bogus" in str(body)


async def test_malformed_json_is_400(client: AsyncTestClient[Litestar], make_tenant: MakeTenant) -> None:
    tenant = await make_tenant()
    response = await client.post(
        "/api/v1/keys",
        headers=bearer(tenant.admin) | {"content-type": "application/json"},
        content=b'{"permission": ',
    )
    body = assert_problem(response, 400, "invalid_request")
    assert "JSON" in body["detail"]


async def test_bad_query_parameter_is_400(client: AsyncTestClient[Litestar], make_tenant: MakeTenant) -> None:
    tenant = await make_tenant()
    body = assert_problem(
        await client.get("/api/v1/keys", headers=bearer(tenant.admin), params={"limit": "x"}), 400
    )
    assert body["errors"][0]["field"] == "limit"


async def test_unknown_route_is_404_problem(client: AsyncTestClient[Litestar]) -> None:
    body = assert_problem(await client.get("/api/v1/nothing-here"), 404, "not_found")
    assert body["instance"] == "/api/v1/nothing-here"


async def test_wrong_method_is_405_problem(client: AsyncTestClient[Litestar]) -> None:
    assert_problem(await client.delete("/healthz"), 405, "method_not_allowed")


async def test_unexpected_exception_is_500_problem_without_internals(
    make_settings: MakeSettings,
) -> None:
    @get("/api/v1/boom", operation_id="boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail")

    app = create_app(make_settings(auth={"require_authentication": False}))
    app.register(boom)
    async with AsyncTestClient(app, raise_server_exceptions=False) as client:
        body = assert_problem(await client.get("/api/v1/boom"), 500, "internal_error")
    assert "secret internal detail" not in str(body)
    assert "request_id" in body["detail"]


async def test_readiness_is_503_problem_when_the_database_is_gone(
    make_settings: MakeSettings,
) -> None:
    app = create_app(make_settings())
    async with AsyncTestClient(app, raise_server_exceptions=False) as client:
        assert (await client.get("/readyz")).status_code == 200
        client.blocking_portal.call(app.state.db.pool.close)
        not_ready = await client.get("/readyz")
        assert_problem(not_ready, 503, "unavailable")
        assert int(not_ready.headers["retry-after"]) >= 1  # as every 503 of a dependency that is down
        assert (await client.get("/healthz")).status_code == 200


async def test_request_id_is_echoed_or_generated(client: AsyncTestClient[Litestar]) -> None:
    given = await client.get("/healthz", headers={"X-Request-ID": "abc-123.x"})
    assert given.headers["x-request-id"] == "abc-123.x"
    generated = await client.get("/healthz")
    assert len(generated.headers["x-request-id"]) == 32
    # Unsafe ids (log injection, oversized) are replaced, not echoed.
    unsafe = await client.get("/healthz", headers={"X-Request-ID": "a b\tc" + "x" * 200})
    assert unsafe.headers["x-request-id"] != "a b\tc" + "x" * 200
    assert len(unsafe.headers["x-request-id"]) == 32
    error = await client.get("/api/v1/me", headers={"X-Request-ID": "trace-42"})
    assert error.json()["request_id"] == "trace-42"


async def test_unknown_query_parameters_are_named(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    response = await client.get(
        "/api/v1/keys", headers=bearer(tenant.admin), params={"limt": "5", "limit": "5"}
    )
    body = assert_problem(response, 400, "invalid_request")
    assert "'limt'" in body["detail"] and "limit" in body["detail"]
    assert body["errors"] == [{"field": "limt", "source": "query", "message": "unknown parameter"}]
    assert (
        await client.get("/api/v1/keys", headers=bearer(tenant.admin), params={"limit": "5"})
    ).status_code == 200


async def test_nested_body_errors_are_400_not_500(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    """Litestar raises a bare 500 for some nested validation failures; we answer 400 naming the field."""
    tenant = await make_tenant()
    response = await client.post("/api/v1/keys", headers=bearer(tenant.admin), json={"collections": {}})
    body = assert_problem(response, 400, "invalid_request")
    assert body["errors"] == [
        {"message": "Expected `array | null`, got `object`", "source": "body", "field": "collections"}
    ]


async def test_a_lost_connection_is_an_outage_but_a_misused_query_is_not(pg_url: str) -> None:
    """Both are asyncpg InterfaceErrors; only the first may become 503 (retry later): the second is
    a bug in the service, and a 503 would send clients into retries that can never succeed."""
    import asyncpg
    import pytest

    from service.errors import is_database_outage

    conn = await asyncpg.connect(pg_url)
    try:
        with pytest.raises(asyncpg.InterfaceError) as misuse:
            await conn.fetch("SELECT $1::int", 1, 2)  # one parameter, two arguments
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InterfaceError) as closed:
        await conn.fetch("SELECT 1")
    assert not is_database_outage(misuse.value)
    assert is_database_outage(closed.value)
