"""API keys: lifecycle, caching, and what each kind of key may do."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from service.auth.keys import hash_secret, parse_key
from service.db import Database
from tests.conftest import LiveServer, MakeTenant, assert_problem, bearer

ME = "/api/v1/me"


def hash_checks() -> float:
    return REGISTRY.get_sample_value("vectorhive_auth_hash_checks_total") or 0.0


async def test_key_format(make_tenant: MakeTenant, db: Database) -> None:
    tenant = await make_tenant()
    parsed = parse_key(tenant.admin)
    assert parsed is not None and tenant.admin.startswith("vh_")
    assert len(parsed.secret) >= 43  # 32 random bytes: 256 bits
    row = await db.pool.fetchrow("SELECT secret_hash FROM api_keys WHERE id = $1", parsed.key_id)
    assert row["secret_hash"].startswith("$argon2id$")
    assert parsed.secret not in row["secret_hash"]


async def test_cli_style_key_gets_200_and_no_key_gets_401(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant("read_only")
    ok = await client.get(ME, headers=bearer(tenant.key("read_only")))
    assert ok.status_code == 200
    assert ok.json()["tenant_id"] == tenant.tenant_id
    assert ok.json()["permission"] == "read_only"
    body = assert_problem(await client.get(ME), 401, "unauthorized")
    assert "Authorization: Bearer" in body["detail"]
    assert (await client.get(ME)).headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer   ",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-key",
        "Bearer vh_short_abc",
        "Bearer vh_aaaaaaaaaaaa_" + "a" * 43,  # well-formed, unknown id
        "Token vh_aaaaaaaaaaaa_" + "a" * 43,
    ],
)
async def test_malformed_or_unknown_keys_get_401(client: AsyncTestClient[Litestar], header: str) -> None:
    assert_problem(await client.get(ME, headers={"Authorization": header}), 401, "unauthorized")


async def test_wrong_secret_gets_401(client: AsyncTestClient[Litestar], make_tenant: MakeTenant) -> None:
    tenant = await make_tenant()
    wrong = tenant.admin[:-4] + ("AAAA" if not tenant.admin.endswith("AAAA") else "BBBB")
    body = assert_problem(await client.get(ME, headers=bearer(wrong)), 401, "unauthorized")
    assert body["detail"] == "The API key is not valid."
    # The real key still works afterwards.
    assert (await client.get(ME, headers=bearer(tenant.admin))).status_code == 200


async def test_argon2_is_not_evaluated_on_a_cached_hit(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant, db: Database, app: Litestar
) -> None:
    tenant = await make_tenant()
    before = hash_checks()
    assert (await client.get(ME, headers=bearer(tenant.admin))).status_code == 200
    assert hash_checks() == before + 1  # the miss ran argon2 once
    for _ in range(5):
        assert (await client.get(ME, headers=bearer(tenant.admin))).status_code == 200
    assert hash_checks() == before + 1  # five hits, no more argon2

    # Stronger: replace the stored hash with the hash of another secret. A cached hit never
    # looks at it; only after the cache is emptied does verification (and so the request) fail.
    key_id = parse_key(tenant.admin).key_id  # type: ignore[union-attr]
    await db.pool.execute("UPDATE api_keys SET secret_hash = $2 WHERE id = $1", key_id, hash_secret("other"))
    assert (await client.get(ME, headers=bearer(tenant.admin))).status_code == 200
    app.state.key_cache.clear()
    assert_problem(await client.get(ME, headers=bearer(tenant.admin)), 401)
    assert hash_checks() == before + 2


async def test_concurrent_first_uses_share_one_verification(
    live_server: LiveServer, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    before = hash_checks()
    async with httpx.AsyncClient(base_url=live_server.url, headers=bearer(tenant.admin)) as http:
        responses = await asyncio.gather(*(http.get(ME) for _ in range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    assert hash_checks() == before + 1  # eight requests at once, one argon2 run


async def test_repeated_wrong_key_is_remembered(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    wrong = tenant.admin[:-1] + ("x" if tenant.admin[-1] != "x" else "y")
    before = hash_checks()
    for _ in range(3):
        assert_problem(await client.get(ME, headers=bearer(wrong)), 401)
    assert hash_checks() == before + 1


async def test_last_used_at_is_recorded(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant, db: Database
) -> None:
    tenant = await make_tenant()
    key_id = parse_key(tenant.admin).key_id  # type: ignore[union-attr]
    assert await db.pool.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", key_id) is None
    await client.get(ME, headers=bearer(tenant.admin))
    assert await db.pool.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", key_id) is not None


async def test_expired_key_gets_401_also_when_cached(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    created = await client.post(
        "/api/v1/keys",
        headers=bearer(tenant.admin),
        json={"permission": "read_only", "expires_at": expires.isoformat()},
    )
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    assert (await client.get(ME, headers=bearer(key))).status_code == 200  # now cached
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.1)
    body = assert_problem(await client.get(ME, headers=bearer(key)), 401)
    assert "expired" in body["detail"]


async def test_key_expired_in_database_gets_401(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant, db: Database
) -> None:
    tenant = await make_tenant("read_only")
    key = tenant.key("read_only")
    await db.pool.execute(
        "UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE id = $1",
        parse_key(key).key_id,  # type: ignore[union-attr]
    )
    body = assert_problem(await client.get(ME, headers=bearer(key)), 401)
    assert "expired" in body["detail"]


@pytest.mark.parametrize(
    ("expires_at", "detail"),
    [("2020-01-01T00:00:00Z", "in the future"), ("2099-01-01T00:00:00", "timezone")],
    ids=["in_the_past", "without_a_time_zone"],
)
async def test_expiry_in_the_past_or_without_a_zone_is_refused(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant, expires_at: str, detail: str
) -> None:
    tenant = await make_tenant()
    body = assert_problem(
        await client.post(
            "/api/v1/keys",
            headers=bearer(tenant.admin),
            json={"permission": "read_only", "expires_at": expires_at},
        ),
        400,
    )
    assert body["errors"][0]["field"] == "expires_at"
    assert detail in body["detail"]


async def test_revocation_takes_effect_at_once(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant("read_write")
    key = tenant.key("read_write")
    key_id = parse_key(key).key_id  # type: ignore[union-attr]
    assert (await client.get(ME, headers=bearer(key))).status_code == 200  # cached
    revoked = await client.delete(f"/api/v1/keys/{key_id}", headers=bearer(tenant.admin))
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    body = assert_problem(await client.get(ME, headers=bearer(key)), 401)
    assert "revoked" in body["detail"]
    # Revoking again is harmless and keeps the first time.
    again = await client.delete(f"/api/v1/keys/{key_id}", headers=bearer(tenant.admin))
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]


async def test_rotation_returns_a_new_key_and_revokes_the_old(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    made = await client.post(
        "/api/v1/keys",
        headers=bearer(tenant.admin),
        json={"permission": "read_only", "name": "ci", "collections": ["docs", "faq"]},
    )
    old = made.json()
    assert (await client.get(ME, headers=bearer(old["key"]))).status_code == 200
    rotated = await client.post(f"/api/v1/keys/{old['key_id']}/rotate", headers=bearer(tenant.admin))
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()
    assert new["key"] != old["key"] and new["key_id"] != old["key_id"]
    assert (new["name"], new["permission"], new["collections"]) == ("ci", "read_only", ["docs", "faq"])
    assert new["rotated_from"] == old["key_id"]
    assert_problem(await client.get(ME, headers=bearer(old["key"])), 401)
    me = await client.get(ME, headers=bearer(new["key"]))
    assert me.status_code == 200 and me.json()["collections"] == ["docs", "faq"]
    # A revoked key cannot be rotated.
    assert_problem(
        await client.post(f"/api/v1/keys/{old['key_id']}/rotate", headers=bearer(tenant.admin)), 409
    )


async def test_suspended_tenant_gets_403_until_resumed(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant, operator_key: str
) -> None:
    tenant = await make_tenant("read_only")
    key = tenant.key("read_only")
    assert (await client.get(ME, headers=bearer(key))).status_code == 200  # cached while active
    suspended = await client.post(
        f"/api/v1/admin/tenants/{tenant.tenant_id}/suspend", headers=bearer(operator_key)
    )
    assert suspended.status_code == 200 and suspended.json()["status"] == "suspended"
    assert_problem(await client.get(ME, headers=bearer(key)), 403, "tenant_suspended")
    assert_problem(await client.get("/api/v1/keys", headers=bearer(tenant.admin)), 403, "tenant_suspended")
    resumed = await client.post(
        f"/api/v1/admin/tenants/{tenant.tenant_id}/resume", headers=bearer(operator_key)
    )
    assert resumed.json()["status"] == "active"
    assert (await client.get(ME, headers=bearer(key))).status_code == 200


async def test_keys_never_appear_in_logs_or_error_bodies(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = await make_tenant()
    secret = parse_key(tenant.admin).secret  # type: ignore[union-attr]
    wrong = tenant.admin[:-2] + "zz"
    caplog.set_level("DEBUG")
    bodies = []
    for headers in (bearer(tenant.admin), bearer(wrong), {"Authorization": "Bearer " + secret}):
        response = await client.get(ME, headers=headers)
        bodies.append(response.text)
        bodies.append(str(response.headers))
    bodies.append(
        (await client.post("/api/v1/keys", headers=bearer(wrong), json={"permission": "admin"})).text
    )
    logged = caplog.text + " ".join(str(r.__dict__) for r in caplog.records)
    assert caplog.records, "expected access-log records"
    for text in (logged, *bodies):
        assert secret not in text
        assert wrong[-20:] not in text


async def test_collection_scoped_admin_cannot_widen_its_scope(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    made = await client.post(
        "/api/v1/keys",
        headers=bearer(tenant.admin),
        json={"permission": "admin", "collections": ["docs", "faq"]},
    )
    scoped = bearer(made.json()["key"])
    for body in ({"permission": "admin"}, {"permission": "read_only", "collections": ["docs", "other"]}):
        assert_problem(
            await client.post("/api/v1/keys", headers=scoped, json=body), 403, "insufficient_scope"
        )
    narrower = await client.post(
        "/api/v1/keys", headers=scoped, json={"permission": "read_only", "collections": ["faq"]}
    )
    assert narrower.status_code == 201
    unscoped_id = parse_key(tenant.admin).key_id  # type: ignore[union-attr]
    for method, path in (
        ("POST", f"/api/v1/keys/{unscoped_id}/rotate"),
        ("DELETE", f"/api/v1/keys/{unscoped_id}"),
    ):
        assert_problem(await client.request(method, path, headers=scoped), 403, "insufficient_scope")
    assert (await client.get(ME, headers=bearer(tenant.admin))).status_code == 200
    rotated = await client.post(f"/api/v1/keys/{narrower.json()['key_id']}/rotate", headers=scoped)
    assert rotated.status_code == 201


def test_cache_refuses_a_verification_older_than_an_eviction() -> None:
    """A revocation (or suspension) while argon2 runs must not be undone by caching the old read."""
    from service.auth.cache import KeyCache
    from service.auth.keys import KeyKind
    from service.auth.principal import Permission, Principal

    clock = [100.0]
    cache = KeyCache(ttl=300, max_size=10, negative_ttl=10, clock=lambda: clock[0])
    principal = Principal(kind=KeyKind.TENANT, key_id="k1", tenant_id="t1", permission=Permission.ADMIN)
    read_at = cache.now()
    clock[0] += 0.1
    cache.evict_key("k1")  # revoked while the secret was being verified
    clock[0] += 0.1
    cache.put(b"fp", principal, read_at=read_at)
    assert cache.get(b"fp") is None
    read_at = cache.now()
    clock[0] += 0.1
    cache.evict_tenant("t1")  # suspended meanwhile
    cache.put(b"fp", principal, read_at=read_at)
    assert cache.get(b"fp") is None
    clock[0] += 0.1
    cache.put(b"fp", principal, read_at=cache.now())  # read after both: cached
    assert cache.get(b"fp") == principal
