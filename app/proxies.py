"""The client's address behind trusted proxies only (TRUSTED_PROXIES), so throttling counts real clients.

X-Forwarded-For is anyone's to write: it is read only when the direct peer is a configured proxy, and then
from the right (the hops our proxies appended) to the first address that is not one of ours. By default
nobody is trusted and the peer address is the client.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(value: str | Iterable[str] | None) -> tuple[Network, ...]:
    """Parse "10.0.0.0/8, 192.0.2.7" (or a list of such) into networks; ValueError names a bad entry."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    networks = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"TRUSTED_PROXIES: {item!r} is not an IP address or network") from None
    return tuple(networks)


def _is_trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(peer: str | None, forwarded_for: str | None, networks: tuple[Network, ...]) -> str | None:
    """The client's address: the peer, or (peer trusted) the rightmost X-Forwarded-For hop that is not a proxy."""
    if not peer or not networks or not _is_trusted(peer, networks):
        return peer
    address = peer
    for hop in reversed([h.strip() for h in (forwarded_for or "").split(",") if h.strip()]):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return address  # not written by a proxy of ours: stop at the last hop we can vouch for
        address = hop
        if not _is_trusted(hop, networks):
            return hop
    return address


class TrustedProxies:
    """WSGI middleware: set REMOTE_ADDR to the client's address (the peer's is kept in servicepro.peer_addr)."""

    def __init__(self, wsgi_app, networks: tuple[Network, ...]):
        self.wsgi_app, self.networks = wsgi_app, networks

    def __call__(self, environ, start_response):
        peer = environ.get("REMOTE_ADDR")
        environ["servicepro.peer_addr"] = peer
        environ["REMOTE_ADDR"] = client_address(peer, environ.get("HTTP_X_FORWARDED_FOR"), self.networks)
        return self.wsgi_app(environ, start_response)
