"""Search: correct scores for every metric, filters with the documented semantics, the index
lifecycle (exact until the HNSW index is ready, recovery after a crash) and filtered recall."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.db import Database
from tests.conftest import MakeSettings, MakeTenant, assert_problem, bearer

API = "/api/v1/collections"
THRESHOLD = 300  # vectors before a collection gets its HNSW index, in this module's app
EXACT_LIMIT = 500  # filters matching fewer vectors are answered by an exact scan
QUIET = 0.5  # seconds without writes before an eligible collection's index is built


@pytest.fixture(scope="module")
async def search_app(make_settings: MakeSettings) -> Litestar:
    return create_app(
        make_settings(
            collections={
                "index_threshold": THRESHOLD,
                "filtered_exact_scan_limit": EXACT_LIMIT,
                "index_build_quiet_seconds": QUIET,
            }
        )
    )


@pytest.fixture(scope="module")
async def sclient(search_app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(search_app, raise_server_exceptions=False) as test_client:
        yield test_client


def scores(metric: str, data: np.ndarray, query: np.ndarray) -> np.ndarray:
    if metric == "cosine":
        return (data @ query) / (np.linalg.norm(data, axis=1) * np.linalg.norm(query))
    if metric == "inner_product":
        return data @ query
    return -np.linalg.norm(data - query, axis=1)


async def load(
    client: AsyncTestClient[Litestar],
    key: dict[str, str],
    name: str,
    data: np.ndarray,
    metadata: list[dict[str, Any]] | None = None,
    **options: Any,
) -> None:
    made = await client.post(API, headers=key, json={"name": name, "dimension": data.shape[1], **options})
    assert made.status_code == 201, made.text
    for start in range(0, len(data), 500):
        items = [
            {"id": str(i), "vector": data[i].tolist(), "metadata": (metadata[i] if metadata else {"i": i})}
            for i in range(start, min(start + 500, len(data)))
        ]
        response = await client.put(f"{API}/{name}/vectors", headers=key, json={"vectors": items})
        assert response.status_code == 200, response.text


async def wait_for_index(client: AsyncTestClient[Litestar], key: dict[str, str], name: str) -> dict[str, Any]:
    for _ in range(600):
        state: dict[str, Any] = (await client.get(f"{API}/{name}", headers=key)).json()["index"]
        if state["status"] in ("ready", "failed"):
            return state
        await asyncio.sleep(0.1)
    raise AssertionError(f"index of {name} not ready: {state}")


@pytest.mark.parametrize("storage", ["float32", "float16"])
@pytest.mark.parametrize("metric", ["cosine", "l2", "inner_product"])
async def test_scores_match_brute_force_before_and_after_indexing(
    sclient: AsyncTestClient[Litestar], make_tenant: MakeTenant, metric: str, storage: str
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    rng = np.random.default_rng(7)
    data = rng.normal(size=(THRESHOLD - 50, 16)).astype(np.float32)
    await load(sclient, key, "c", data, metric=metric, storage=storage)
    query = rng.normal(size=16).astype(np.float32)
    expected = scores(
        metric,
        data.astype(np.float16 if storage == "float16" else np.float32).astype(np.float64),
        query.astype(np.float64),
    )
    order = np.argsort(-expected)[:10]

    exact = (
        await sclient.post(f"{API}/c/search", headers=key, json={"vector": query.tolist(), "top_k": 10})
    ).json()
    assert exact["strategy"] == "exact"
    assert [hit["id"] for hit in exact["results"]] == [str(i) for i in order]
    tolerance = 2e-2 if storage == "float16" else 1e-4
    assert np.allclose(
        [hit["score"] for hit in exact["results"]], expected[order], rtol=tolerance, atol=tolerance
    )
    assert all(a["score"] >= b["score"] for a, b in zip(exact["results"], exact["results"][1:], strict=False))

    # Cross the threshold: the index is built in the background, then used.
    extra = rng.normal(size=(100, 16)).astype(np.float32)
    items = [{"id": f"x{i}", "vector": extra[i].tolist()} for i in range(100)]
    await sclient.put(f"{API}/c/vectors", headers=key, json={"vectors": items})
    assert (await wait_for_index(sclient, key, "c"))["status"] == "ready"
    everything = np.vstack([data, extra]).astype(np.float16 if storage == "float16" else np.float32)
    expected = scores(metric, everything.astype(np.float64), query.astype(np.float64))
    truth = set(np.argsort(-expected)[:10].tolist())
    indexed = (
        await sclient.post(f"{API}/c/search", headers=key, json={"vector": query.tolist(), "top_k": 10})
    ).json()
    assert indexed["strategy"] == "hnsw"
    found = {int(h["id"]) if h["id"].isdigit() else len(data) + int(h["id"][1:]) for h in indexed["results"]}
    assert len(found & truth) >= 9  # recall@10 >= 0.9 on 350 vectors with ef_search 100


async def test_search_options(sclient: AsyncTestClient[Litestar], make_tenant: MakeTenant) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    data = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], dtype=np.float32)
    await load(sclient, key, "c", data, metadata=[{"n": i} for i in range(4)])
    search = f"{API}/c/search"
    full = (await sclient.post(search, headers=key, json={"vector": [1, 0], "top_k": 4})).json()
    assert [h["id"] for h in full["results"]] == ["0", "1", "2", "3"]
    assert full["results"][0] == {"id": "0", "score": pytest.approx(1.0), "metadata": {"n": 0}}
    assert full["results"][3]["score"] == pytest.approx(-1.0)
    assert full["took_ms"] >= 0

    above = (
        await sclient.post(search, headers=key, json={"vector": [1, 0], "top_k": 4, "threshold": 0.5})
    ).json()
    assert [h["id"] for h in above["results"]] == ["0", "1"]
    bare = (
        await sclient.post(
            search,
            headers=key,
            json={"vector": [1, 0], "top_k": 1, "include_metadata": False, "include_vector": True},
        )
    ).json()
    assert bare["results"] == [{"id": "0", "score": pytest.approx(1.0), "vector": [1.0, 0.0]}]

    batch = await sclient.post(
        f"{search}/batch",
        headers=key,
        json={"queries": [{"vector": [0, 1], "top_k": 1}, {"vector": [-1, 0], "top_k": 2}]},
    )
    assert batch.status_code == 200, batch.text
    assert [[h["id"] for h in r] for r in batch.json()["results"]] == [["2"], ["3", "2"]]

    for body, field in [
        ({"vector": [1, 0, 0]}, "vector"),
        ({"vector": [1, 0], "top_k": 0}, "top_k"),
        ({"vector": [1, 0], "top_k": 1001}, "top_k"),
        ({"vector": [1, 0], "ef_search": 0}, "ef_search"),
        ({"vector": [1, 0], "filter": {"n": {"$gt": [1]}}}, "filter.n.$gt"),
        ({"vector": [1, 0], "filter": {"$or": {}}}, "filter.$or"),
        ({"vector": [1, 0], "filter": {"n": {"$regex": "x"}}}, "filter.n.$regex"),
        ({"vector": [1, 0], "filter": {"$gt": 1}}, "filter.$gt"),
        ({"vector": [1, 0], "filter": [1]}, "filter"),
    ]:
        problem = assert_problem(await sclient.post(search, headers=key, json=body), 400)
        assert field in str(problem), (body, problem)
    queries = {"queries": [{"vector": [1, 0]}, {"vector": [1]}]}
    problem = assert_problem(await sclient.post(f"{search}/batch", headers=key, json=queries), 400)
    assert "queries[1].vector" in problem["detail"]
    many = {"queries": [{"vector": [1, 0]}] * 101}
    assert_problem(await sclient.post(f"{search}/batch", headers=key, json=many), 400)


# -- filters: the API agrees with a reference evaluator of the documented semantics --------------

MISSING = object()


def lookup(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def matches(doc: dict[str, Any], spec: dict[str, Any]) -> bool:
    for key, cond in spec.items():
        if key == "$and":
            ok = all(matches(doc, s) for s in cond)
        elif key == "$or":
            ok = any(matches(doc, s) for s in cond)
        elif key == "$not":
            ok = not matches(doc, cond)
        else:
            value = lookup(doc, key)
            ops = (
                cond
                if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond)
                else {"$eq": cond}
            )
            ok = all(check(value, op, arg) for op, arg in ops.items())
        if not ok:
            return False
    return True


def check(value: Any, op: str, arg: Any) -> bool:
    if op == "$eq":
        return value is not MISSING and same(value, arg)
    if op == "$ne":
        return not check(value, "$eq", arg)
    if op == "$in":
        return any(check(value, "$eq", a) for a in arg)
    if op == "$nin":
        return not check(value, "$in", arg)
    if op == "$exists":
        return (value is not MISSING) == arg
    kind = str if isinstance(arg, str) else (int, float)
    if value is MISSING or isinstance(value, bool) or not isinstance(value, kind):
        return False
    return {"$gt": value > arg, "$gte": value >= arg, "$lt": value < arg, "$lte": value <= arg}[op]


def documents(n: int) -> list[dict[str, Any]]:
    docs = []
    for i in range(n):
        doc: dict[str, Any] = {
            "n": i,
            "tag": f"t{i % 5}",
            "flag": i % 3 == 0,
            "nested": {"x": i / 10, "y": f"s{i % 7}"},
        }
        if i % 4 == 0:
            doc["maybe"] = None if i % 8 == 0 else i
        if i % 6 == 0:
            doc["arr"] = [i % 2, "a"]
        if i % 9 == 0:
            doc["mixed"] = "10" if i % 2 else 10
        docs.append(doc)
    return docs


FILTERS: list[dict[str, Any]] = [
    {},
    {"tag": "t1"},
    {"tag": {"$eq": "t1"}, "flag": True},
    {"flag": False},
    {"n": 3},
    {"n": 3.0},
    {"nested.y": "s2"},
    {"nested": {"x": 0.5, "y": "s5"}},
    {"tag": {"$ne": "t1"}},
    {"maybe": None},
    {"maybe": {"$ne": None}},
    {"maybe": {"$exists": True}},
    {"maybe": {"$exists": False}},
    {"tag": {"$in": ["t1", "t3"]}},
    {"tag": {"$nin": ["t1", "t3"]}},
    {"n": {"$gt": 10, "$lte": 20}},
    {"n": {"$gte": 45}},
    {"nested.x": {"$lt": 1.5}},
    {"nested.y": {"$gte": "s5"}},
    {"mixed": {"$gt": 5}},
    {"mixed": {"$gt": "1"}},
    {"arr": [0, "a"]},
    {"arr": {"$exists": True}, "n": {"$lt": 30}},
    {"$or": [{"tag": "t0"}, {"nested.x": {"$gt": 4}}]},
    {"$and": [{"flag": True}, {"$not": {"tag": "t0"}}]},
    {"$not": {"$or": [{"n": {"$lt": 10}}, {"n": {"$gt": 40}}]}},
    {"missing.path": {"$exists": False}, "tag": "t2"},
    # Negations over fields that some documents lack: true for those documents.
    {"$not": {"maybe": {"$gt": 10}}},
    {"arr": {"$ne": [0, "a"]}},
    {"arr": {"$nin": [[0, "a"], [1, "b"]]}},
    {"$not": {"nested.y": {"$gte": "s5"}}},
    {"$not": {"mixed": {"$lt": "2"}}},
]


async def test_filters_match_reference_semantics(
    sclient: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    docs = documents(50)
    data = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    await load(sclient, key, "c", data, metadata=docs)
    for spec in FILTERS:
        response = await sclient.post(
            f"{API}/c/search", headers=key, json={"vector": [1, 0, 0, 0], "top_k": 1000, "filter": spec}
        )
        assert response.status_code == 200, (spec, response.text)
        got = sorted(int(h["id"]) for h in response.json()["results"])
        expected = [i for i, doc in enumerate(docs) if matches(doc, spec)]
        assert got == expected, spec
        # Delete-by-filter selects the same vectors (checked on a copy that is thrown away).
    copy = await sclient.post(
        f"{API}/c/vectors/delete",
        headers=key,
        json={"filter": {"$or": [{"tag": "t0"}, {"nested.x": {"$gt": 4}}]}},
    )
    assert copy.json()["deleted"] == len([d for d in docs if matches(d, FILTERS[23])])


# -- index lifecycle ------------------------------------------------------------------------------


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, dim))
    return (centers[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


async def test_filtered_search_keeps_its_recall(
    sclient: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    n = 3000
    data = clustered(n, 32, 3)
    rng = np.random.default_rng(4)
    rare = set(rng.choice(n, 30, replace=False).tolist())  # 1% selectivity
    metadata = [{"rare": i in rare, "half": i % 2 == 0} for i in range(n)]
    await load(sclient, key, "c", data, metadata=metadata)
    assert (await wait_for_index(sclient, key, "c"))["status"] == "ready"

    recalls: dict[str, list[float]] = {"rare": [], "half": []}
    for _ in range(20):
        query = data[rng.integers(0, n)] + 0.1 * rng.normal(size=32).astype(np.float32)
        for field, allowed in (("rare", sorted(rare)), ("half", list(range(0, n, 2)))):
            body = {"vector": query.tolist(), "top_k": 10, "filter": {field: True}}
            result = (await sclient.post(f"{API}/c/search", headers=key, json=body)).json()
            assert result["strategy"] == ("exact" if field == "rare" else "hnsw_filtered")
            ids = [int(h["id"]) for h in result["results"]]
            assert len(ids) == 10 and all(metadata[i][field] for i in ids)
            candidates = np.array(allowed)
            truth = set(candidates[np.argsort(-scores("cosine", data[candidates], query))[:10]].tolist())
            recalls[field].append(len(truth & set(ids)) / 10)
    assert np.mean(recalls["rare"]) == 1.0  # exact scan of the few matches
    assert np.mean(recalls["half"]) >= 0.95  # iterative index scan


async def test_index_build_recovers_after_a_crash(
    sclient: AsyncTestClient[Litestar], search_app: Litestar, make_tenant: MakeTenant, db: Database
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    data = clustered(THRESHOLD + 10, 8, 5)
    await load(sclient, key, "c", data)
    assert (await wait_for_index(sclient, key, "c"))["status"] == "ready"
    collection_id = await db.pool.fetchval(
        "SELECT id FROM collections WHERE tenant_id = $1 AND name = 'c'", tenant.tenant_id
    )
    # What a crash mid-build leaves: the row says 'building', the index is not there (or invalid).
    await db.pool.execute(f"DROP INDEX vectors_{collection_id}_hnsw")
    await db.pool.execute("UPDATE collections SET index_status = 'building' WHERE id = $1", collection_id)
    during = (
        await sclient.post(f"{API}/c/search", headers=key, json={"vector": data[0].tolist(), "top_k": 1})
    ).json()
    assert during["strategy"] == "exact" and during["results"][0]["id"] == "0"

    sclient.blocking_portal.call(search_app.state.indexer.recover)  # what a restarting replica runs
    assert (await wait_for_index(sclient, key, "c"))["status"] == "ready"
    valid = await db.pool.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", f"vectors_{collection_id}_hnsw"
    )
    assert valid is True
    after = (
        await sclient.post(f"{API}/c/search", headers=key, json={"vector": data[0].tolist(), "top_k": 1})
    ).json()
    assert after["strategy"] == "hnsw" and after["results"][0]["id"] == "0"


async def test_delete_during_index_build(
    sclient: AsyncTestClient[Litestar], make_tenant: MakeTenant, db: Database
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    await load(sclient, key, "c", clustered(THRESHOLD + 200, 64, 6))
    response = await sclient.delete(f"{API}/c", headers=key)
    assert response.status_code == 204
    assert_problem(await sclient.get(f"{API}/c", headers=key), 404)
    rows = await db.pool.fetchval("SELECT count(*) FROM collections WHERE tenant_id = $1", tenant.tenant_id)
    assert rows == 0


async def test_index_waits_for_a_bulk_load_to_pause(
    sclient: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    data = clustered(THRESHOLD + 400, 8, 8)
    await load(sclient, key, "c", data[: THRESHOLD + 10])  # eligible from here on
    for start in range(THRESHOLD + 10, len(data), 30):  # writes keep coming, faster than QUIET
        items = [{"id": str(i), "vector": data[i].tolist()} for i in range(start, min(start + 30, len(data)))]
        assert (
            await sclient.put(f"{API}/c/vectors", headers=key, json={"vectors": items})
        ).status_code == 200
        assert (await sclient.get(f"{API}/c", headers=key)).json()["index"]["status"] == "none"
        await asyncio.sleep(QUIET / 5)
    assert (await wait_for_index(sclient, key, "c"))["status"] == "ready"


async def test_an_index_build_outlasting_the_command_timeout_still_finishes(
    client: AsyncTestClient[Litestar],
    make_tenant: MakeTenant,
    make_settings: MakeSettings,
    db: Database,
) -> None:
    """asyncpg applies the pool's command_timeout to a statement given timeout=None: a build of a
    large collection (minutes) must not be cut off by it (60 s by default; 250 ms here)."""
    from service.collections.indexer import IndexBuilder

    tenant = await make_tenant()
    data = np.random.default_rng(7).normal(size=(4000, 64)).astype(np.float32)
    await load(client, bearer(tenant.admin), "big", data)  # below the session app's index threshold
    settings = make_settings(database={"command_timeout": 0.25})
    impatient = Database(settings.database)
    await impatient.start(migrate=False)
    try:
        collection_id = await db.pool.fetchval(
            "SELECT id FROM collections WHERE tenant_id = $1 AND name = 'big'", tenant.tenant_id
        )
        builder = IndexBuilder(impatient, settings.collections)
        builder.schedule(collection_id)
        for _ in range(600):
            row = await db.pool.fetchrow(
                "SELECT index_status, index_error FROM collections WHERE id = $1", collection_id
            )
            if row["index_status"] in ("ready", "failed"):
                break
            await asyncio.sleep(0.05)
        assert row["index_status"] == "ready", row["index_error"]
        await builder.close()
    finally:
        await impatient.stop()


async def test_a_collection_dropped_and_created_again_is_never_searched_through_a_stale_row(
    sclient: AsyncTestClient[Litestar], search_app: Litestar, make_tenant: MakeTenant
) -> None:
    """Rows of searched collections are cached per process and dropped by a notification; should
    one be missed, the stale row names a table that is gone: the search looks again, not 404."""
    tenant = await make_tenant()
    key = bearer(tenant.admin)
    await load(sclient, key, "again", np.array([[1, 0, 0]], dtype=np.float32))
    assert (
        await sclient.post(f"{API}/again/search", json={"vector": [1, 0, 0]}, headers=key)
    ).status_code == 200
    collections = search_app.state.collection_service
    stale = collections.access._rows.get((tenant.tenant_id, "again"))
    assert stale is not None  # the search cached it
    assert (await sclient.delete(f"{API}/again", headers=key)).status_code == 204
    await load(sclient, key, "again", np.array([[0, 1, 0, 0]], dtype=np.float32), dimension=4)
    collections.access._rows.put(
        tenant.tenant_id, (tenant.tenant_id, "again"), stale
    )  # as if the news were lost
    found = await sclient.post(f"{API}/again/search", json={"vector": [0, 1, 0, 0]}, headers=key)
    assert found.status_code == 200, found.text
    assert [h["id"] for h in found.json()["results"]] == ["0"]
    assert collections.access._rows.get((tenant.tenant_id, "again")).dimension == 4
    # Another tenant's search of the same name never sees this row (the cache is per tenant).
    other = await make_tenant()
    assert_problem(
        await sclient.post(f"{API}/again/search", json={"vector": [0, 1, 0, 0]}, headers=bearer(other.admin)),
        404,
    )
