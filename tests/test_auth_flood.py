"""An unauthenticated argon2 flood: bad key ids cost nothing, wrong secrets are limited per key id
and per client address before any hashing, and legitimate verifications go first."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.auth.slots import PrioritySlots, SlotsBusy
from tests.conftest import MakeSettings, MakeTenant, assert_problem, bearer, run_live_server
from tests.test_auth import ME, hash_checks


def random_secret(key: str) -> str:
    """The same key id (and prefix) with a fresh random secret."""
    prefix, key_id, _ = key.split("_", 2)
    return f"{prefix}_{key_id}_{secrets.token_urlsafe(32)}"


@pytest.fixture
async def flood_client(make_settings: MakeSettings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """Its own app (own counters), with small limits: 3 wrong secrets per key id, 5 per address."""
    settings = make_settings(
        auth={
            "failed_verifications_per_key_per_minute": 3,
            "failed_verifications_per_address_per_minute": 5,
        }
    )
    async with AsyncTestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


async def test_revoked_and_unknown_key_ids_are_refused_without_hashing(
    client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant("read_only")
    key = tenant.key("read_only")
    key_id = key.split("_")[1]
    assert (await client.delete(f"/api/v1/keys/{key_id}", headers=bearer(tenant.admin))).status_code in (
        200,
        204,
    )
    before = hash_checks()
    for _ in range(5):  # a fresh secret each time: the negative cache is keyed by the key id
        body = assert_problem(await client.get(ME, headers=bearer(random_secret(key))), 401, "unauthorized")
        assert "revoked" in body["detail"]
    unknown = f"vh_{'a' * 12}_{secrets.token_urlsafe(32)}"
    for _ in range(3):
        assert_problem(await client.get(ME, headers=bearer(random_secret(unknown))), 401, "unauthorized")
    assert hash_checks() == before  # not one argon2 run


async def test_wrong_secrets_are_limited_per_key_id_then_per_address(
    flood_client: AsyncTestClient[Litestar], make_tenant: MakeTenant
) -> None:
    victim, other = await make_tenant("read_only"), await make_tenant()
    good = victim.key("read_only")
    assert (await flood_client.get(ME, headers=bearer(good))).status_code == 200  # now cached

    before = hash_checks()
    for _ in range(3):
        assert_problem(await flood_client.get(ME, headers=bearer(random_secret(good))), 401)
    assert hash_checks() == before + 3
    refused = await flood_client.get(ME, headers=bearer(random_secret(good)))
    body = assert_problem(refused, 429, "rate_limited")
    assert body["limit"] == "auth_failures_per_key" and body["scope"] == "key" and body["value"] == 3
    assert int(refused.headers["retry-after"]) >= 1
    assert "3 wrong secrets per minute" in body["detail"]
    assert hash_checks() == before + 3  # refused before hashing
    # The owner's key, already verified, is not locked out.
    assert (await flood_client.get(ME, headers=bearer(good))).status_code == 200

    # Another key id from the same address: two more wrong secrets make five for the address.
    for _ in range(2):
        assert_problem(await flood_client.get(ME, headers=bearer(random_secret(other.admin))), 401)
    body = assert_problem(
        await flood_client.get(ME, headers=bearer(random_secret(other.admin))), 429, "rate_limited"
    )
    assert body["limit"] == "auth_failures_per_address" and body["scope"] == "address"
    assert hash_checks() == before + 5


async def test_a_wave_of_concurrent_wrong_secrets_is_limited_before_any_failure_is_on_record(
    make_settings: MakeSettings, make_tenant: MakeTenant
) -> None:
    """48 connections at once with one key id: none has failed yet when the others arrive, so the
    failure count alone let every one of them run argon2 (and ahead of legitimate first uses).
    Secrets being checked count against the per-key-id limit, and make the others suspect."""
    settings = make_settings(
        auth={"failed_verifications_per_key_per_minute": 3, "failed_verifications_per_address_per_minute": 0}
    )
    tenant = await make_tenant("read_only")
    with run_live_server(settings) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=60) as http:
            before = hash_checks()
            answers = await asyncio.gather(
                *(http.get(ME, headers=bearer(random_secret(tenant.admin))) for _ in range(48))
            )
            statuses = sorted(r.status_code for r in answers)
            assert set(statuses) <= {401, 429}, statuses
            assert statuses.count(401) <= 3, statuses  # no more argon2 runs than the limit allows
            assert hash_checks() - before <= 3
            for refused in (r for r in answers if r.status_code == 429):
                body = assert_problem(refused, 429, "rate_limited")
                assert body["limit"] == "auth_failures_per_key"
            # A key of the same tenant, used for the first time, is verified as usual.
            ok = await http.get(ME, headers=bearer(tenant.key("read_only")))
            assert ok.status_code == 200, ok.text


async def test_unsuspected_waiters_go_first_and_suspect_ones_are_bounded() -> None:
    slots = PrioritySlots(1, max_waiting=2)
    order: list[str] = []
    gate = asyncio.Event()

    async def holder() -> None:
        async with slots.slot(suspect=False):
            await gate.wait()

    async def waiter(name: str, suspect: bool) -> None:
        async with slots.slot(suspect=suspect):
            order.append(name)

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    flood = [asyncio.create_task(waiter(f"attacker{i}", True)) for i in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(SlotsBusy):  # a third suspect waiter is refused at once
        await waiter("attacker2", True)
    legit = asyncio.create_task(waiter("legit", False))  # never refused, and served first
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, legit, *flood)
    assert order == ["legit", "attacker0", "attacker1"]
