"""Client addresses as access logs write them: which one is the client, and its parts.

A log's client field may hold an address (``192.0.2.1``, ``2001:db8::1``), an address
with its port (``192.0.2.1:2817`` from ELB, ALB and HAProxy, ``[2001:db8::1]:2817``), a
host name (Apache with ``HostnameLookups On``; kept as ``source.address`` only),
``localhost``, NGINX's ``unix:`` (a request over a UNIX socket: no client), or a whole
``X-Forwarded-For`` list (``10.0.0.2, 10.0.0.1``, when the log format writes
``$http_x_forwarded_for`` where the client goes).

:func:`resolve_client` reads such a field, and the ``X-Forwarded-For`` field when the
format has one, as one chain of hops, the nearest last. Walking it from the nearest hop,
the client is the first hop that is not a trusted proxy (``METRONOME_TRUSTED_PROXIES``):
hops further left were written by whoever sent the request, and are never believed past
an untrusted hop. With no trusted proxies, the client is the nearest hop: for a log whose
client field is an ``X-Forwarded-For`` list, the address the load balancer in front of the
server appended itself.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

__all__ = ["Client", "Hop", "parse_hop", "resolve_client"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAX_HOPS = 32  # a longer list keeps its nearest hops
_MAX_HOP_CHARS = 256
_NOT_ADDRESSES = frozenset({"", "-", "unknown", "_"})
_LOCALHOST = "127.0.0.1"


class Hop(NamedTuple):
    """One address as logged: ``address`` its text without port or brackets, ``ip`` the
    address it is (None for a host name), ``port`` the port logged with it."""

    address: str
    ip: str | None
    port: int | None


class Client(NamedTuple):
    """The client of a request, and every address of its forwarded chain (``related``,
    empty when there was only the client)."""

    address: str
    ip: str | None
    port: int | None
    related: tuple[str, ...]


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def parse_hop(text: str) -> Hop | None:
    """One hop as logged (see the module docstring), or None when it names no client."""
    text = text.strip().strip('"').strip()
    if text.lower() in _NOT_ADDRESSES or len(text) > _MAX_HOP_CHARS:
        return None
    port: int | None = None
    if text.startswith("["):  # [v6] or [v6]:port
        inside, _, after = text[1:].partition("]")
        text = inside
        if after.startswith(":") and after[1:].isdigit():
            port = int(after[1:])
    elif text.count(":") == 1 and not text.startswith("unix:"):  # v4:port or name:port
        name, _, digits = text.partition(":")
        if digits.isdigit():
            text, port = name, int(digits)
    if port is not None and port > 65535:
        port = None
    if text.startswith("unix:"):  # a UNIX socket: no address to store
        return None
    ip = _ip(text)
    if ip is None and text.lower() == "localhost":
        ip = _LOCALHOST
    return Hop(text if ip is None else ip if text.lower() != "localhost" else text, ip, port)


def _hops(text: str) -> list[Hop]:
    found = []
    for part in text.rsplit(",", _MAX_HOPS)[-_MAX_HOPS:]:
        hop = parse_hop(part)
        if hop is not None:
            found.append(hop)
    return found


def resolve_client(
    remote_addr: str, forwarded_for: str | None, trusted: tuple[Network, ...]
) -> Client | None:
    """The client of a line's client field (and ``X-Forwarded-For`` field), or None when
    they name no client; see the module docstring."""
    chain = _hops(remote_addr)
    if forwarded_for and trusted:
        chain = _hops(forwarded_for) + chain
    elif forwarded_for:  # kept in related.ip, not believed: no proxy is trusted
        related = [hop.ip for hop in _hops(forwarded_for) if hop.ip]
        client = _walk(chain, trusted)
        if client is None:
            return None
        ips = [*related, *(hop.ip for hop in chain if hop.ip)]
        return client._replace(related=tuple(ips) if len(ips) > 1 else ())
    client = _walk(chain, trusted)
    if client is None or len(chain) < 2:
        return client
    return client._replace(related=tuple(hop.ip for hop in chain if hop.ip))


def _walk(chain: list[Hop], trusted: tuple[Network, ...]) -> Client | None:
    """The nearest hop that is not a trusted proxy (see the module docstring)."""
    if not chain:
        return None
    chosen = chain[-1]
    for hop in reversed(chain):
        if hop.ip is None:
            if hop is chain[-1]:
                chosen = hop
            break
        chosen = hop
        if not trusted or not any(ipaddress.ip_address(hop.ip) in net for net in trusted):
            break
    return Client(chosen.address, chosen.ip, chosen.port, ())
