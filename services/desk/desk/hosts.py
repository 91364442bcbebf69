"""Which ``Host`` the desk answers to, and the address its links carry.

A desk that answers any ``Host`` can be reached through DNS rebinding (a page
on the attacker's name that resolves to the operator's workstation or an
internal address), and a link built from the request's ``Host`` can point
anywhere the requester likes. So the desk answers only its configured public
name (``OPENLINES_DESK_PUBLIC_URL``), the names in ``OPENLINES_DESK_ALLOWED_HOSTS``
and the loopback names, and builds links only from the public URL - or, when
none is set (a desk on loopback, as ``make dev`` runs it), from the loopback
address the request came to.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
# Paths the orchestrator's probes and the metrics scraper call by the pod's address.
UNCHECKED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

_HOST = re.compile(
    r"^(?:(?P<name>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)|\[(?P<ip6>[0-9A-Fa-f:.]{2,45})\])"
    r"(?::(?P<port>[0-9]{1,5}))?$"
)


def parse_host(header: str) -> tuple[str, int | None] | None:
    """``(name, port)`` of a ``Host`` header value (name lower-cased), or None if it is not one."""
    m = _HOST.match(header)
    if m is None:
        return None
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        return None
    if m["ip6"]:
        try:
            return str(ipaddress.IPv6Address(m["ip6"])), port
        except ValueError:
            return None
    return m["name"].lower().rstrip("."), port


def is_loopback(name: str) -> bool:
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostPolicy:
    """The desk's allowed hosts and its public base URL."""

    def __init__(self, public_url: str, extra_hosts: list[str]) -> None:
        self.public_url = public_url.rstrip("/")
        public = urlsplit(self.public_url).hostname if self.public_url else None
        self.allowed = frozenset({*(h.lower().rstrip(".") for h in extra_hosts), *([public.lower()] if public else [])})

    def allows(self, header: str) -> bool:
        parsed = parse_host(header)
        if parsed is None:
            return False
        name, _ = parsed
        return name in self.allowed or is_loopback(name)

    def base(self, scheme: str, header: str) -> str:
        """The address links carry: the public URL, or (none set) the loopback address the request came to."""
        if self.public_url:
            return self.public_url
        parsed = parse_host(header)
        if parsed is None or not is_loopback(parsed[0]):
            raise ValueError(f"no public URL set and {header!r} is not a loopback address")
        name, port = parsed
        shown = f"[{name}]" if ":" in name else name
        return f"{'https' if scheme == 'https' else 'http'}://{shown}{f':{port}' if port else ''}"


def check_public_url(value: str, variable: str) -> None:
    """A usable public URL: http(s), a host, no path beyond "/", no query, no credentials."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{variable} must be an http:// or https:// address with a host name, e.g. https://desk.example.com")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{variable} must be just scheme and host (and port), e.g. https://desk.example.com; got {value!r}")
