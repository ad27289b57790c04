"""Where the service may send requests a client chose the address of (webhooks).

Why: a webhook URL is picked by any API key holder, and the worker POSTs to it from inside
the deployment's network. Without a check, a key is a way to reach what only the service
should: the cloud metadata endpoint (169.254.169.254), the database, MinIO's console, an
admin port on localhost (server-side request forgery). So a target must resolve to
globally routable addresses only, checked when the endpoint is registered and again before
every delivery (a name may resolve elsewhere later), and redirects are never followed.

A deployment whose receivers live on its own network turns the check off with
`TUNEFORGE_WEBHOOK_ALLOW_PRIVATE_TARGETS=true` (the test suite does: its receivers listen on
127.0.0.1). What remains: the name is resolved twice (here and by the HTTP client), so a
DNS server that answers differently within milliseconds could still slip through; run the
workers behind an egress proxy where that matters.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class TargetRefused(ValueError):
    """The URL's host is, or resolves to, an address outside the public internet."""


def _reason(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.is_global and not ip.is_multicast:
        return None
    kind = next(
        (name for name in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified") if getattr(ip, f"is_{name}")),
        "not globally routable",
    )
    return f"{ip} is {kind.replace('_', '-')}"


def check_target(url: str, *, allow_private: bool, resolve: bool = True) -> None:
    """Raise TargetRefused when `url`'s host is or resolves to a non-public address.

    A literal address is always checked; a name only when `resolve` (a name that does not
    resolve now is let through at registration: it is checked again before each send)."""
    if allow_private:
        return
    host = urlsplit(url).hostname or ""
    try:
        addresses = [host] if _is_literal(host) else _resolve(host) if resolve else []
    except OSError:
        addresses = []
    for address in addresses:
        if why := _reason(address):
            where = why if address == host else f"{host} resolves to {why.replace(' is ', ', which is ', 1)}"
            raise TargetRefused(f"{where}: webhooks only reach public addresses on this server")


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _resolve(host: str) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
