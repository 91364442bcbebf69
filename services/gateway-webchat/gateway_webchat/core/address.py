"""Which client address a request counts against.

The TCP peer, unless the peer is a trusted proxy: then the address that proxy
reports in the configured header (``X-Forwarded-For`` style: a list, the
client first, each proxy appending the address it received the request from).
It is read from the right, skipping our own trusted proxies, so a client
cannot choose its address by sending the header itself. IPv6 clients count by
their /64: one subscriber usually holds a whole /64 and could otherwise
rotate through addresses for free.
"""

from __future__ import annotations

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 127.0.0.1"`` -> networks; ValueError naming the bad entry."""
    out: list[Network] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(out)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def _trusted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, proxies: tuple[Network, ...]) -> bool:
    return any(ip.version == net.version and ip in net for net in proxies)


def _key(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def client_key(peer: str | None, forwarded: str | None, proxies: tuple[Network, ...]) -> str:
    """The address (IPv4) or /64 (IPv6) a request is counted against."""
    peer_ip = _ip(peer or "")
    if peer_ip is None:
        return peer or "unknown"  # a Unix socket: there is no address to tell clients apart
    if not forwarded or not _trusted(peer_ip, proxies):
        return _key(peer_ip)
    hops = [h for h in (part.strip() for part in forwarded.split(",")) if h]
    for hop in reversed(hops):
        ip = _ip(hop)
        if ip is None:
            break  # garbage in the chain: trust nothing left of it
        if not _trusted(ip, proxies):
            return _key(ip)
        peer_ip = ip
    return _key(peer_ip)
