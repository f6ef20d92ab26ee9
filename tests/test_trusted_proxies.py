"""server.trusted_proxies: X-Forwarded-For counts for the per-address limit on failed authentications
only when the request's TCP peer is a listed proxy. Real HTTP on 127.0.0.1 (uvicorn, as
`vectorhive serve` runs it), so the peer address is the socket's, not a test client's invention."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from service.auth.proxies import ClientAddress
from service.config import ConfigError, load_settings
from tests.conftest import MakeSettings, MakeTenant, TenantKeys, assert_problem, bearer, run_live_server
from tests.test_auth import ME
from tests.test_auth_flood import random_secret

LIMIT = 3  # wrong secrets per address per minute, in these tests


@contextmanager
def server(make_settings: MakeSettings, trusted: list[str]) -> Iterator[str]:
    settings = make_settings(
        server={"trusted_proxies": trusted},
        # Only the per-address limit: the per-key one would hide whose limit answered.
        auth={
            "failed_verifications_per_key_per_minute": 0,
            "failed_verifications_per_address_per_minute": LIMIT,
        },
    )
    with run_live_server(settings) as live:
        yield live.url


async def wrong_secret(http: httpx.AsyncClient, key: str, forwarded_for: str | None = None) -> httpx.Response:
    headers = bearer(random_secret(key))
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    return await http.get(ME, headers=headers)


async def exhaust(http: httpx.AsyncClient, key: str, forwarded_for: str | None) -> None:
    for _ in range(LIMIT):
        assert_problem(await wrong_secret(http, key, forwarded_for), 401, "unauthorized")


def assert_address_limited(response: httpx.Response) -> None:
    body = assert_problem(response, 429, "rate_limited")
    assert body["limit"] == "auth_failures_per_address" and body["scope"] == "address", body


async def test_without_trusted_proxies_x_forwarded_for_is_ignored(
    make_settings: MakeSettings, make_tenant: MakeTenant
) -> None:
    tenant: TenantKeys = await make_tenant()
    with server(make_settings, []) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            # A flooder that writes a new address into the header each time is still one address.
            for n in range(LIMIT):
                assert_problem(await wrong_secret(http, tenant.admin, f"198.51.100.{n}"), 401, "unauthorized")
            assert_address_limited(await wrong_secret(http, tenant.admin, "198.51.100.200"))
            assert_address_limited(await wrong_secret(http, tenant.admin))


async def test_a_trusted_proxy_reports_the_client_and_each_client_has_its_own_limit(
    make_settings: MakeSettings, make_tenant: MakeTenant
) -> None:
    tenant: TenantKeys = await make_tenant("read_only")
    # The test's own connections come from 127.0.0.1: here, that is the reverse proxy.
    with server(make_settings, ["127.0.0.0/8", "10.0.0.0/8"]) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            await exhaust(http, tenant.admin, "203.0.113.7")
            assert_address_limited(await wrong_secret(http, tenant.admin, "203.0.113.7"))
            # What the client wrote left of what the proxies appended changes nothing: the rightmost
            # address that is not a trusted proxy (here behind a second, internal proxy) is the client.
            assert_address_limited(
                await wrong_secret(http, tenant.admin, "192.0.2.99, 203.0.113.7, 10.1.2.3")
            )
            # Another client behind the same proxy is not limited by the first one's failures,
            assert_problem(await wrong_secret(http, tenant.admin, "203.0.113.8"), 401, "unauthorized")
            # and its first use of a right key is verified (from the limited one, it would be 429).
            ok = await http.get(
                ME, headers={**bearer(tenant.key("read_only")), "X-Forwarded-For": "203.0.113.8"}
            )
            assert ok.status_code == 200, ok.text
            # Requests from the proxy itself, without the header, count as the proxy's own address.
            await exhaust(http, tenant.admin, None)
            assert_address_limited(await wrong_secret(http, tenant.admin))
            assert_problem(await wrong_secret(http, tenant.admin, "203.0.113.9"), 401, "unauthorized")


async def test_the_header_from_a_peer_that_is_not_a_trusted_proxy_is_ignored(
    make_settings: MakeSettings, make_tenant: MakeTenant
) -> None:
    tenant: TenantKeys = await make_tenant()
    with server(make_settings, ["10.0.0.0/8"]) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            for n in range(LIMIT):
                assert_problem(await wrong_secret(http, tenant.admin, f"10.0.0.{n}"), 401, "unauthorized")
            assert_address_limited(await wrong_secret(http, tenant.admin, "10.9.9.9"))


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        ("127.0.0.1", [], "127.0.0.1"),
        ("127.0.0.1", ["203.0.113.7"], "203.0.113.7"),
        ("127.0.0.1", ["192.0.2.1, 203.0.113.7"], "203.0.113.7"),
        ("127.0.0.1", ["192.0.2.1", "203.0.113.7, 10.0.0.5"], "203.0.113.7"),  # two header lines
        ("127.0.0.1", ["203.0.113.7:4711"], "203.0.113.7"),
        ("127.0.0.1", ["[2001:db8::7]:443"], "2001:db8::7"),
        ("127.0.0.1", ["2001:db8::7"], "2001:db8::7"),
        ("127.0.0.1", ["::ffff:203.0.113.7"], "203.0.113.7"),
        ("127.0.0.1", ["10.0.0.5, 10.0.0.6"], "10.0.0.5"),  # only proxies: the leftmost
        ("127.0.0.1", ["203.0.113.7, unknown"], "127.0.0.1"),  # a hop that is no address
        ("127.0.0.1", ["203.0.113.7, garbage, 10.0.0.5"], "10.0.0.5"),
        ("192.0.2.50", ["203.0.113.7"], "192.0.2.50"),  # not a trusted peer
        ("::ffff:127.0.0.1", ["203.0.113.7"], "203.0.113.7"),
    ],
)
def test_which_address_is_the_client(peer: str, header: list[str], client: str) -> None:
    assert ClientAddress(["127.0.0.1", "10.0.0.0/8"]).resolve(peer, header) == client


def test_no_trusted_proxies_means_the_peer() -> None:
    assert ClientAddress([]).resolve("127.0.0.1", ["203.0.113.7"]) == "127.0.0.1"
    assert ClientAddress([]).resolve(None, ["203.0.113.7"]) is None


def test_trusted_proxies_from_the_environment_and_bad_entries(tmp_path: Any) -> None:
    settings = load_settings(
        environ={"VECTORHIVE_SERVER__TRUSTED_PROXIES": "[10.0.0.0/8, 192.0.2.1, 'fd00::/8']"}, cwd=tmp_path
    )
    assert settings.server.trusted_proxies == ["10.0.0.0/8", "192.0.2.1", "fd00::/8"]
    assert load_settings(environ={}, cwd=tmp_path).server.trusted_proxies == []
    with pytest.raises(ConfigError, match=r"server.trusted_proxies\[1\]: 'lb.internal' is not an IP address"):
        load_settings(
            environ={"VECTORHIVE_SERVER__TRUSTED_PROXIES": "[10.0.0.0/8, lb.internal]"}, cwd=tmp_path
        )
