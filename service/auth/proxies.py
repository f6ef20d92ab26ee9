"""Whose address a request comes from, for the per-address limit on failed authentications.

The TCP peer, unless that peer is one of `server.trusted_proxies` (a reverse proxy or load
balancer the operator runs): then the address it reported in X-Forwarded-For. Without trusted
proxies the header is ignored, since any client can write it; behind a proxy that is not listed,
every client would share the proxy's address (and its limit).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Sequence[str]) -> tuple[Network, ...]:
    """CIDRs or single addresses ("10.0.0.0/8", "192.0.2.1", "fd00::/8"); ValueError names a bad one."""
    return tuple(ipaddress.ip_network(value.strip(), strict=False) for value in values)


def _address(text: str) -> Address | None:
    """An X-Forwarded-For entry or a peer: "192.0.2.1", "192.0.2.1:80", "2001:db8::1", "[2001:db8::1]:80"."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port; bare IPv6 has several colons
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:192.0.2.1 from a dual-stack socket is 192.0.2.1
    return address


class ClientAddress:
    def __init__(self, trusted_proxies: Sequence[str]) -> None:
        self.trusted = parse_networks(trusted_proxies)

    def _is_trusted(self, address: Address) -> bool:
        return any(address in network for network in self.trusted)

    def resolve(self, peer: str | None, forwarded_for: Sequence[str]) -> str | None:
        """The client's address: X-Forwarded-For is read right to left (each trusted proxy appends
        the address it saw), and the first address that is not a trusted proxy is the client.
        Entries further left were written by the client itself and mean nothing. An entry that is
        not an address ends the walk: the trusted hop that passed it on answers for it."""
        if not self.trusted or peer is None:
            return peer
        current = _address(peer)
        if current is None or not self._is_trusted(current):
            return peer
        hops = [hop for header in forwarded_for for hop in header.split(",") if hop.strip()]
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                break
            current = address
            if not self._is_trusted(address):
                break
        return str(current)
