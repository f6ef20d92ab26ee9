"""Read-only sessions and delegation tokens: what a session token may do, how it ends, and that
it never widens its parent key's rights or crosses tenants. Real PostgreSQL, real Ed25519."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.db import Database
from service.sessions.tokens import Claims, b64url_decode, sign
from tests.conftest import MakeSettings, MakeTenant, assert_problem, bearer

ISSUER = "vectorhive"


@pytest.fixture(scope="module")
async def app(make_settings: MakeSettings) -> Litestar:
    # Short TTLs allowed and a quick sweep, so expiry is seen within a test.
    return create_app(
        make_settings(
            sessions={
                "min_ttl_seconds": 1,
                "sweep_interval_seconds": 0.5,
                "max_sessions_per_tenant": 4,
            }
        )
    )


@pytest.fixture(scope="module")
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


async def collection(client: Any, key: str, name: str, vectors: int = 3) -> None:
    created = await client.post(
        "/api/v1/collections", json={"name": name, "dimension": 3}, headers=bearer(key)
    )
    assert created.status_code == 201, created.text
    items = [{"id": f"v{i}", "vector": [1.0, float(i), 0.5], "metadata": {"i": i}} for i in range(vectors)]
    upserted = await client.put(
        f"/api/v1/collections/{name}/vectors", json={"vectors": items}, headers=bearer(key)
    )
    assert upserted.status_code == 200, upserted.text


async def open_session(client: Any, key: str, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/sessions", json=body, headers=bearer(key))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


SEARCH = {"vector": [1.0, 0.0, 0.5], "top_k": 2}


def forged(app: Litestar, **changes: Any) -> str:
    """A token signed by this server's real current key, with claims of the test's choosing."""
    current = app.state.session_service.keyring.current()
    assert current is not None
    kid, key = current
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": f"{ISSUER}:session",
        "exp": now + 600,
        "iat": now,
        "jti": "x",
        "tid": "nobody",
        "col": ["docs"],
        "sid": "ses_missing",
    }
    claims.update(changes)
    return sign(msgspec.convert(claims, Claims), key, kid)


async def test_a_session_token_reads_and_searches_its_collections_and_nothing_else(
    client: Any, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    await collection(client, tenant.admin, "docs")
    await collection(client, tenant.admin, "private")
    created = await open_session(client, tenant.admin, collections=["docs"], ttl_seconds=600)
    assert created["status"] == "active" and created["mode"] == "read_only"
    assert created["collections"] == ["docs"] and created["session_id"].startswith("ses_")
    token = bearer(created["token"])

    found = await client.post("/api/v1/collections/docs/search", json=SEARCH, headers=token)
    assert found.status_code == 200, found.text
    assert [h["id"] for h in found.json()["results"]] == ["v0", "v1"]
    assert (await client.get("/api/v1/collections/docs", headers=token)).status_code == 200
    assert (await client.get("/api/v1/collections/docs/vectors/v1", headers=token)).status_code == 200
    batch = await client.post(
        "/api/v1/collections/docs/search/batch", json={"queries": [SEARCH]}, headers=token
    )
    assert batch.status_code == 200, batch.text
    own = await client.post(f"/api/v1/sessions/{created['session_id']}/search", json=SEARCH, headers=token)
    assert own.status_code == 200 and own.json()["collection"] == "docs", own.text
    by_query = await client.get(
        f"/api/v1/sessions/{created['session_id']}/search",
        params={"vector": "1,0,0.5", "top_k": 1},
        headers=token,
    )
    assert by_query.status_code == 200 and len(by_query.json()["results"]) == 1, by_query.text

    # Another collection of the same tenant does not exist for the session.
    for path in ("/api/v1/collections/private", "/api/v1/collections/private/vectors/v1"):
        assert_problem(await client.get(path, headers=token), 404, "not_found")
    assert_problem(
        await client.post("/api/v1/collections/private/search", json=SEARCH, headers=token), 404, "not_found"
    )
    # Nothing but reads: no writes, no listings, no keys, no new sessions, no who-am-I.
    write = await client.put(
        "/api/v1/collections/docs/vectors",
        json={"vectors": [{"id": "x", "vector": [1, 1, 1]}]},
        headers=token,
    )
    assert_problem(write, 403, "insufficient_permission")
    assert_problem(await client.delete("/api/v1/collections/docs/vectors/v1", headers=token), 403)
    for method, path in (
        ("GET", "/api/v1/collections"),
        ("GET", "/api/v1/collections/docs/vectors"),
        ("GET", "/api/v1/me"),
        ("GET", "/api/v1/sessions"),
        ("GET", "/api/v1/usage"),
    ):
        assert_problem(await client.request(method, path, headers=token), 403, "session_token_not_allowed")
    again = await client.post("/api/v1/sessions", json={"collections": ["docs"]}, headers=token)
    assert_problem(again, 403, "session_token_not_allowed")
    assert_problem(await client.get("/api/v1/admin/tenants", headers=token), 403)
    # The vectors are untouched.
    scroll = await client.get("/api/v1/collections/docs/vectors", headers=bearer(tenant.admin))
    assert [v["id"] for v in scroll.json()["items"]] == ["v0", "v1", "v2"]


async def test_forged_unknown_expired_and_misdirected_tokens_are_refused(
    app: Litestar, client: Any, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    await collection(client, tenant.admin, "docs")
    created = await open_session(client, tenant.admin, collections=["docs"])
    token = created["token"]
    path = "/api/v1/collections/docs/search"
    assert (await client.post(path, json=SEARCH, headers=bearer(token))).status_code == 200

    header, payload, signature = token.split(".")
    # Forged signature: one bit of the signature changed.
    sig = bytearray(b64url_decode(signature))
    sig[0] ^= 1
    tampered = f"{header}.{payload}.{base64.urlsafe_b64encode(bytes(sig)).rstrip(b'=').decode()}"
    assert_problem(await client.post(path, json=SEARCH, headers=bearer(tampered)), 401, "invalid_token")
    # Widened claims under the original signature: more collections.
    claims = msgspec.json.decode(b64url_decode(payload))
    claims["col"] = ["docs", "private"]
    widened = base64.urlsafe_b64encode(msgspec.json.encode(claims)).rstrip(b"=").decode()
    assert_problem(
        await client.post(path, json=SEARCH, headers=bearer(f"{header}.{widened}.{signature}")),
        401,
        "invalid_token",
    )
    # Signed by a key of our own making under the server's kid: the signature does not verify.
    kid = msgspec.json.decode(b64url_decode(header))["kid"]
    stranger = sign(msgspec.convert(claims, Claims), Ed25519PrivateKey.generate(), kid)
    assert_problem(await client.post(path, json=SEARCH, headers=bearer(stranger)), 401, "invalid_token")
    # An unknown kid.
    unknown = sign(msgspec.convert(claims, Claims), Ed25519PrivateKey.generate(), "ed25519-0000000000000000")
    assert_problem(await client.post(path, json=SEARCH, headers=bearer(unknown)), 401, "unknown_signing_key")
    # alg "none" is never accepted.
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","kid":"k","typ":"JWT"}').rstrip(b"=").decode()
    assert_problem(
        await client.post(path, json=SEARCH, headers=bearer(f"{none_header}.{payload}.")),
        401,
        "invalid_token",
    )
    # Expired (signed by the real key), and the wrong audience or issuer.
    real = dict(claims, col=["docs"])
    expired = forged(app, **dict(real, exp=int(time.time()) - 5, iat=int(time.time()) - 60))
    assert_problem(await client.post(path, json=SEARCH, headers=bearer(expired)), 401, "token_expired")
    elsewhere = forged(app, **dict(real, aud="other-service:session"))
    assert_problem(
        await client.post(path, json=SEARCH, headers=bearer(elsewhere)), 401, "token_wrong_audience"
    )
    other_issuer = forged(app, **dict(real, iss="someone-else", aud="someone-else:session"))
    assert_problem(await client.post(path, json=SEARCH, headers=bearer(other_issuer)), 401, "invalid_token")
    # A delegation token is not a bearer credential, and a session token is not a delegation.
    delegation = await client.post(
        "/api/v1/sessions/delegations", json={"collections": ["docs"]}, headers=bearer(tenant.admin)
    )
    assert delegation.status_code == 201, delegation.text
    assert_problem(
        await client.post(path, json=SEARCH, headers=bearer(delegation.json()["delegation_token"])),
        401,
        "token_wrong_audience",
    )
    exchanged = await client.post("/api/v1/sessions/create", json={"delegation_token": token})
    assert_problem(exchanged, 401, "token_wrong_audience")
    # The genuine token still works: nothing above changed anything.
    assert (await client.post(path, json=SEARCH, headers=bearer(token))).status_code == 200


async def test_a_token_can_only_narrow_its_parents_rights(client: Any, make_tenant: MakeTenant) -> None:
    tenant = await make_tenant("read_only", collections=["a"])
    await collection(client, tenant.admin, "a")
    await collection(client, tenant.admin, "b")
    scoped = tenant.key("read_only")
    for body in ({"collections": ["a", "b"]}, {"collections": ["b"]}):
        assert_problem(
            await client.post("/api/v1/sessions", json=body, headers=bearer(scoped)),
            403,
            "insufficient_scope",
        )
        assert_problem(
            await client.post("/api/v1/sessions/delegations", json=body, headers=bearer(scoped)),
            403,
            "insufficient_scope",
        )
    # Sessions are read-only: a request for more is refused whatever the key.
    for key in (scoped, tenant.admin):
        write = await client.post(
            "/api/v1/sessions", json={"collections": ["a"], "mode": "read_write"}, headers=bearer(key)
        )
        assert_problem(write, 400)
    # What it may: a session of its own scope.
    created = await open_session(client, scoped, collections=["a"])
    assert created["parent_key_id"] == scoped.split("_")[1]
    # MCP keys start no sessions.
    mcp = await make_tenant("mcp")
    assert_problem(
        await client.post("/api/v1/sessions", json={"collections": ["a"]}, headers=bearer(mcp.key("mcp"))),
        403,
    )


async def test_tenants_never_see_each_others_collections_or_sessions(
    client: Any, make_tenant: MakeTenant, db: Database
) -> None:
    a, b = await make_tenant(), await make_tenant()
    await collection(client, b.admin, "secret")
    await collection(client, a.admin, "shared-name")
    await collection(client, b.admin, "shared-name", vectors=1)
    # A names B's collection: exactly the answer for a collection that exists nowhere.
    for name in ("secret", "no-such-collection"):
        refused = await client.post("/api/v1/sessions", json={"collections": [name]}, headers=bearer(a.admin))
        body = assert_problem(refused, 404, "not_found")
        assert body["detail"] == f"Collection '{name}' does not exist."
    # A's session of its own "shared-name" reads A's, never B's collection of the same name.
    created = await open_session(client, a.admin, collections=["shared-name"])
    found = await client.post(
        "/api/v1/collections/shared-name/search",
        json={**SEARCH, "top_k": 10},
        headers=bearer(created["token"]),
    )
    assert len(found.json()["results"]) == 3
    # B cannot see, search or end A's session.
    sid = created["session_id"]
    assert_problem(await client.get(f"/api/v1/sessions/{sid}", headers=bearer(b.admin)), 404)
    assert_problem(await client.delete(f"/api/v1/sessions/{sid}", headers=bearer(b.admin)), 404)
    assert_problem(
        await client.post(f"/api/v1/sessions/{sid}/search", json=SEARCH, headers=bearer(b.admin)), 404
    )
    listed = await client.get("/api/v1/sessions", headers=bearer(b.admin))
    assert listed.json()["items"] == []
    assert await db.pool.fetchval("SELECT ended_at FROM sessions WHERE id = $1", sid) is None
    assert (
        await client.post(
            "/api/v1/collections/shared-name/search", json=SEARCH, headers=bearer(created["token"])
        )
    ).status_code == 200


async def test_a_forged_claim_of_another_tenant_gets_nothing(
    app: Litestar, client: Any, make_tenant: MakeTenant
) -> None:
    a, b = await make_tenant(), await make_tenant()
    await collection(client, b.admin, "secret")
    await collection(client, a.admin, "mine")
    created = await open_session(client, a.admin, collections=["mine"])
    sid = created["session_id"]
    # Even signed with the server's own key (which no client has): a token whose tenant is not
    # its session's is refused; one that names B's collection gets the session's rights, which
    # do not include it (404, exactly as for a collection that exists nowhere).
    other_tenant = forged(app, sid=sid, jti=sid, tid=b.tenant_id, col=["secret"])
    response = await client.post(
        "/api/v1/collections/secret/search", json=SEARCH, headers=bearer(other_tenant)
    )
    assert_problem(response, 401, "invalid_token")
    wider = forged(app, sid=sid, jti=sid, tid=a.tenant_id, col=["mine", "secret"])
    response = await client.post("/api/v1/collections/secret/search", json=SEARCH, headers=bearer(wider))
    assert assert_problem(response, 404, "not_found")["detail"] == "Collection 'secret' does not exist."


async def test_deleting_revoking_or_suspending_ends_the_token_at_once(
    client: Any, make_tenant: MakeTenant, operator_key: str
) -> None:
    tenant = await make_tenant("read_only")
    await collection(client, tenant.admin, "docs")
    path = "/api/v1/collections/docs/search"

    deleted = await open_session(client, tenant.admin, collections=["docs"])
    assert (await client.post(path, json=SEARCH, headers=bearer(deleted["token"]))).status_code == 200
    gone = await client.delete(f"/api/v1/sessions/{deleted['session_id']}", headers=bearer(tenant.admin))
    assert gone.status_code == 204, gone.text
    assert_problem(
        await client.post(path, json=SEARCH, headers=bearer(deleted["token"])), 401, "session_ended"
    )
    shown = await client.get(f"/api/v1/sessions/{deleted['session_id']}", headers=bearer(tenant.admin))
    assert shown.json()["status"] == "ended" and shown.json()["end_reason"] == "deleted"

    # A session ends itself with its own token.
    own = await open_session(client, tenant.admin, collections=["docs"])
    assert (
        await client.delete(f"/api/v1/sessions/{own['session_id']}", headers=bearer(own["token"]))
    ).status_code == 204
    assert_problem(await client.post(path, json=SEARCH, headers=bearer(own["token"])), 401, "session_ended")

    # Parent key revoked: its sessions end with it.
    child = await open_session(client, tenant.key("read_only"), collections=["docs"])
    assert (await client.post(path, json=SEARCH, headers=bearer(child["token"]))).status_code == 200
    key_id = tenant.key("read_only").split("_")[1]
    assert (await client.delete(f"/api/v1/keys/{key_id}", headers=bearer(tenant.admin))).status_code == 200
    assert_problem(
        await client.post(path, json=SEARCH, headers=bearer(child["token"])), 401, "parent_key_revoked"
    )

    # Tenant suspended: refused until resumed.
    held = await open_session(client, tenant.admin, collections=["docs"])
    assert (await client.post(path, json=SEARCH, headers=bearer(held["token"]))).status_code == 200
    ops = bearer(operator_key)
    assert (
        await client.post(f"/api/v1/admin/tenants/{tenant.tenant_id}/suspend", headers=ops)
    ).status_code in (200, 201)
    assert_problem(
        await client.post(path, json=SEARCH, headers=bearer(held["token"])), 403, "tenant_suspended"
    )
    assert (
        await client.post(f"/api/v1/admin/tenants/{tenant.tenant_id}/resume", headers=ops)
    ).status_code in (200, 201)
    assert (await client.post(path, json=SEARCH, headers=bearer(held["token"]))).status_code == 200


async def test_ttl_expiry_and_the_sweep(client: Any, make_tenant: MakeTenant, db: Database) -> None:
    tenant = await make_tenant()
    await collection(client, tenant.admin, "docs")
    created = await open_session(client, tenant.admin, collections=["docs"], ttl_seconds=1)
    path = "/api/v1/collections/docs/search"
    assert (await client.post(path, json=SEARCH, headers=bearer(created["token"]))).status_code == 200
    await asyncio.sleep(1.6)
    assert_problem(
        await client.post(path, json=SEARCH, headers=bearer(created["token"])), 401, "token_expired"
    )
    shown = (
        await client.get(f"/api/v1/sessions/{created['session_id']}", headers=bearer(tenant.admin))
    ).json()
    assert shown["status"] == "ended" and shown["end_reason"] == "expired"
    # The sweep (every 0.5 s here) ends the row and audits it.
    deadline = time.monotonic() + 10
    while (
        await db.pool.fetchval("SELECT end_reason FROM sessions WHERE id = $1", created["session_id"]) is None
    ):
        assert time.monotonic() < deadline, "the sweep did not end the expired session"
        await asyncio.sleep(0.2)
    audit = await client.get("/api/v1/audit", params={"action": "session"}, headers=bearer(tenant.admin))
    actions = {(e["action"], e["target"]) for e in audit.json()["items"]}
    assert ("session.create", created["session_id"]) in actions
    assert ("session.expire", created["session_id"]) in actions
    assert ("session.use", created["session_id"]) in actions


async def test_max_queries_and_limits(client: Any, make_tenant: MakeTenant) -> None:
    tenant = await make_tenant()
    await collection(client, tenant.admin, "docs")
    created = await open_session(client, tenant.admin, collections=["docs"], max_queries=2)
    token = bearer(created["token"])
    first = await client.post("/api/v1/collections/docs/search", json=SEARCH, headers=token)
    assert first.status_code == 200
    second = await client.post(f"/api/v1/sessions/{created['session_id']}/search", json=SEARCH, headers=token)
    assert second.status_code == 200 and second.json()["queries_used"] == 2
    # A batch would count as one query: refused to a session with max_queries (nothing counted).
    batch = await client.post(
        "/api/v1/collections/docs/search/batch", json={"queries": [SEARCH] * 5}, headers=token
    )
    assert_problem(batch, 403, "session_batch_not_allowed")
    third = await client.post("/api/v1/collections/docs/search", json=SEARCH, headers=token)
    assert_problem(third, 403, "session_queries_exhausted")
    # Reads that are not queries still work; the count is what was allowed.
    assert (await client.get("/api/v1/collections/docs", headers=token)).status_code == 200
    shown = (
        await client.get(f"/api/v1/sessions/{created['session_id']}", headers=bearer(tenant.admin))
    ).json()
    assert shown["queries_used"] == 2 and shown["max_queries"] == 2

    # TTL bounds (1..86400 here).
    for ttl in (0, 86_401):
        body = assert_problem(
            await client.post(
                "/api/v1/sessions",
                json={"collections": ["docs"], "ttl_seconds": ttl},
                headers=bearer(tenant.admin),
            ),
            400,
        )
        assert body["errors"][0]["field"] == "ttl_seconds"
    # At most 4 live sessions per tenant here (one is used up, not ended): then 429 with Retry-After.
    for _ in range(3):
        await open_session(client, tenant.admin, collections=["docs"])
    refused = await client.post(
        "/api/v1/sessions", json={"collections": ["docs"]}, headers=bearer(tenant.admin)
    )
    body = assert_problem(refused, 429, "rate_limited")
    assert body["limit"] == "max_sessions_per_tenant" and int(refused.headers["retry-after"]) >= 1


async def test_delegation_tokens_are_exchanged_once_and_die_with_their_parent(
    client: Any, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant("read_only")
    await collection(client, tenant.admin, "docs")
    delegated = await client.post(
        "/api/v1/sessions/delegations",
        json={"collections": ["docs"], "session_ttl_seconds": 120, "max_queries": 5},
        headers=bearer(tenant.key("read_only")),
    )
    assert delegated.status_code == 201, delegated.text
    token = delegated.json()["delegation_token"]
    # No API key: the delegation token is the credential.
    exchanged = await client.post(
        "/api/v1/sessions/create", json={"delegation_token": token, "mode": "read_only"}
    )
    assert exchanged.status_code == 201, exchanged.text
    session = exchanged.json()
    assert session["max_queries"] == 5 and session["collections"] == ["docs"]
    lifetime = msgspec.json.decode(b64url_decode(session["token"].split(".")[1]))
    assert lifetime["exp"] - lifetime["iat"] <= 121
    found = await client.post(
        "/api/v1/collections/docs/search", json=SEARCH, headers=bearer(session["token"])
    )
    assert found.status_code == 200
    assert_problem(
        await client.post("/api/v1/sessions/create", json={"delegation_token": token}), 409, "delegation_used"
    )
    # A longer session than delegated is refused.
    second = await client.post(
        "/api/v1/sessions/delegations",
        json={"collections": ["docs"], "session_ttl_seconds": 60},
        headers=bearer(tenant.admin),
    )
    longer = await client.post(
        "/api/v1/sessions/create",
        json={"delegation_token": second.json()["delegation_token"], "ttl_seconds": 600},
    )
    assert_problem(longer, 400)
    # The parent revoked: an unexchanged delegation is worthless, and the session ended.
    spare = await client.post(
        "/api/v1/sessions/delegations",
        json={"collections": ["docs"]},
        headers=bearer(tenant.key("read_only")),
    )
    key_id = tenant.key("read_only").split("_")[1]
    assert (await client.delete(f"/api/v1/keys/{key_id}", headers=bearer(tenant.admin))).status_code == 200
    late = await client.post(
        "/api/v1/sessions/create", json={"delegation_token": spare.json()["delegation_token"]}
    )
    assert_problem(late, 401, "parent_key_revoked")
    assert_problem(
        await client.post("/api/v1/collections/docs/search", json=SEARCH, headers=bearer(session["token"])),
        401,
        "parent_key_revoked",
    )
    assert_problem(
        await client.post("/api/v1/sessions/create", json={"delegation_token": "nonsense"}),
        401,
        "invalid_token",
    )


async def test_listing_with_cursors(client: Any, make_tenant: MakeTenant) -> None:
    tenant = await make_tenant("read_only", collections=["a"])
    await collection(client, tenant.admin, "a")
    await collection(client, tenant.admin, "b")
    ids = {
        (await open_session(client, tenant.admin, collections=[name]))["session_id"]
        for name in ("a", "b", "a")
    }
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/v1/sessions", params=params, headers=bearer(tenant.admin))).json()
        seen += [s["session_id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids)
    # A key limited to "a" sees only the sessions within "a".
    scoped = (await client.get("/api/v1/sessions", headers=bearer(tenant.key("read_only")))).json()
    assert {tuple(s["collections"]) for s in scoped["items"]} == {("a",)} and len(scoped["items"]) == 2
    assert_problem(
        await client.get("/api/v1/sessions", params={"cursor": "%%%"}, headers=bearer(tenant.admin)), 400
    )


async def test_rotation_keeps_tokens_valid_and_jwks_verifies_them(
    app: Litestar, client: Any, make_tenant: MakeTenant, operator_key: str
) -> None:
    tenant = await make_tenant()
    await collection(client, tenant.admin, "docs")
    before = await open_session(client, tenant.admin, collections=["docs"])
    rotated = await client.post("/api/v1/admin/sessions/keys/rotate", headers=bearer(operator_key))
    assert rotated.status_code == 200, rotated.text
    new_kid = rotated.json()["kid"]
    after = await open_session(client, tenant.admin, collections=["docs"])
    kids = [
        msgspec.json.decode(b64url_decode(t.split(".")[0]))["kid"] for t in (before["token"], after["token"])
    ]
    assert kids[1] == new_kid and kids[0] != new_kid
    for created in (before, after):
        response = await client.post(
            "/api/v1/collections/docs/search", json=SEARCH, headers=bearer(created["token"])
        )
        assert response.status_code == 200
    # JWKS needs no key, and verifies both tokens; no private material in it.
    jwks = await client.get("/api/v1/sessions/keys")
    assert jwks.status_code == 200
    keys = {k["kid"]: k for k in jwks.json()["keys"]}
    assert set(kids) <= set(keys)
    for token in (before["token"], after["token"]):
        header, payload, signature = token.split(".")
        jwk = keys[msgspec.json.decode(b64url_decode(header))["kid"]]
        assert set(jwk) == {"kty", "crv", "x", "kid", "use", "alg"} and jwk["crv"] == "Ed25519"
        public = Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
        public.verify(b64url_decode(signature), f"{header}.{payload}".encode())
    # Only operators rotate.
    assert_problem(await client.post("/api/v1/admin/sessions/keys/rotate", headers=bearer(tenant.admin)), 403)


async def test_private_keys_are_sealed_in_the_database(db: Database, client: Any) -> None:
    rows = await db.pool.fetch("SELECT kid, public_key, private_sealed FROM session_signing_keys")
    assert rows
    for row in rows:
        # nonce (12) + 32-byte key + tag (16): encrypted, and not the raw key bytes.
        assert len(row["private_sealed"]) == 12 + 32 + 16


async def test_a_session_searches_documents_by_text(client: Any, make_tenant: MakeTenant) -> None:
    from tests.test_documents import add, make_text_collection, paragraphs

    tenant = await make_tenant()
    await make_text_collection(client, tenant.admin, "kb")
    added = await add(
        client, tenant.admin, {"travel": paragraphs(8), "other": "Bread and butter."}, name="kb"
    )
    assert added.status_code in (200, 201), added.text
    created = await open_session(client, tenant.admin, collections=["kb"])
    token = bearer(created["token"])
    sid = created["session_id"]

    by_text = await client.post(
        f"/api/v1/sessions/{sid}/search", json={"query": "glacier letters"}, headers=token
    )
    assert by_text.status_code == 200, by_text.text
    hits = by_text.json()["results"]
    assert hits and hits[0]["document_id"] == "travel" and "glacier" in hits[0]["text"]
    keyword = await client.get(
        f"/api/v1/sessions/{sid}/search", params={"q": "butter", "mode": "keyword"}, headers=token
    )
    assert keyword.status_code == 200, keyword.text
    assert [h["document_id"] for h in keyword.json()["results"]] == ["other"]
    # The token on the collection's own endpoints: search by text, read a document.
    direct = await client.post("/api/v1/collections/kb/search", json={"text": "orchard"}, headers=token)
    assert direct.status_code == 200 and direct.json()["results"], direct.text
    document = await client.get("/api/v1/collections/kb/documents/other", headers=token)
    assert document.status_code == 200 and document.json()["text"] == "Bread and butter."
    # Neither or both of vector and query: 400, and nothing counted against the session.
    both = await client.post(
        f"/api/v1/sessions/{sid}/search", json={"query": "x", "vector": [0.0] * 384}, headers=token
    )
    assert_problem(both, 400)
    assert_problem(await client.post(f"/api/v1/sessions/{sid}/search", json={}, headers=token), 400)
    # Writing documents is not reading.
    write = await client.post(
        "/api/v1/collections/kb/documents", json={"documents": [{"id": "x", "text": "y"}]}, headers=token
    )
    assert_problem(write, 403)
