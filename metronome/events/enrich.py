"""What the server adds to an event: client address, parsed user agent, referrer keys."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import ua_parser

from metronome.events.document import FrozenDict, freeze

__all__ = [
    "UserAgent",
    "client_address",
    "parse_user_agent",
    "referrer_keys",
    "url_parts",
    "user_agent_fields",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class UserAgent:
    """The parts of a User-Agent header that reports use."""

    name: str | None
    version: str | None
    os_name: str | None
    os_version: str | None
    device_name: str | None
    is_bot: bool


def _join_version(*parts: str | None) -> str | None:
    present = [p for p in parts if p]
    return ".".join(present) or None


_MAX_CACHED_CHARS = 2048
"""The longest text (a URL, a referrer, a user agent) a cache below is keyed on: longer
text is worked out each time, never kept, so a client sending distinct long values holds
no memory (a cache holds at most its entries times this many characters)."""


def parse_user_agent(header: str) -> UserAgent:
    """Parse a User-Agent with uap-core's maintained rules (cached per distinct header
    up to ``_MAX_CACHED_CHARS``).

    A user agent is a bot when uap-core classifies its device as ``Spider``: its list of
    known crawlers (Googlebot, bingbot, ...). Command-line clients such as curl are not.
    """
    if len(header) > _MAX_CACHED_CHARS:
        return _parse_user_agent(header)
    return _cached_parse_user_agent(header)


def _parse_user_agent(header: str) -> UserAgent:
    result = ua_parser.parse(header)
    ua, os_, device = result.user_agent, result.os, result.device
    return UserAgent(
        name=ua.family if ua and ua.family != "Other" else None,
        version=_join_version(ua.major, ua.minor, ua.patch) if ua else None,
        os_name=os_.family if os_ and os_.family != "Other" else None,
        os_version=_join_version(os_.major, os_.minor, os_.patch) if os_ else None,
        device_name=device.family if device and device.family != "Other" else None,
        is_bot=bool(device and device.family == "Spider"),
    )


_cached_parse_user_agent = lru_cache(maxsize=4096)(_parse_user_agent)


_MAX_ADDRESS_CHARS = 64
"""Longer than any address with a port (``[v6%zone]:port``): longer text is no address,
and is neither parsed nor cached."""

_MAX_HOPS = 32
"""The most ``X-Forwarded-For`` hops read, from the right (a chain of trusted proxies
longer than this is not a deployment: the address read last is taken)."""


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if len(text) > _MAX_ADDRESS_CHARS:
        return None
    return _parse_short_ip(text)


@lru_cache(maxsize=4096)
def _parse_short_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@lru_cache(maxsize=8192)
def _peer_address(peer: str, trusted: tuple[Network, ...]) -> tuple[str, bool] | None:
    """The peer's address as text, and whether it is a trusted proxy (cached: every
    request asks, and peers are few and short)."""
    peer_ip = _parse_ip(peer)
    if peer_ip is None:
        return None
    return str(peer_ip), any(peer_ip in net for net in trusted)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]
) -> str | None:
    """The client's address: the direct peer, unless that peer is a trusted proxy.

    Behind trusted proxies, ``X-Forwarded-For`` is read right to left and the first address
    that is not itself a trusted proxy is the client. Addresses a client could forge (those
    left of an untrusted hop) are never believed. Only the peer is cached, never the header:
    a client chooses it, and a cache keyed on it would hold whatever it sends.
    """
    if not peer or len(peer) > _MAX_ADDRESS_CHARS:
        return None
    known = _peer_address(peer, trusted)
    if known is None:
        return None
    address, behind_proxy = known
    if not forwarded_for or not behind_proxy:
        return address
    client = _parse_short_ip(peer)
    hops = forwarded_for.rsplit(",", _MAX_HOPS)[-_MAX_HOPS:]
    for hop in reversed(hops):
        hop_ip = _parse_ip(hop)
        if hop_ip is None:
            break
        client = hop_ip
        if not any(hop_ip in net for net in trusted):
            break
    return str(client)


def _host(netloc_host: str | None) -> str | None:
    if not netloc_host:
        return None
    host = netloc_host.lower().rstrip(".")
    return host or None


def url_parts(url: str) -> tuple[str | None, str | None]:
    """``(domain, path)`` of a URL; either may be None when the URL has none."""
    if len(url) > _MAX_CACHED_CHARS:
        return _url_parts(url)
    return _cached_url_parts(url)


def _url_parts(url: str) -> tuple[str | None, str | None]:
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return None, None
    return _host(host), parts.path or None


_cached_url_parts = lru_cache(maxsize=4096)(_url_parts)


def referrer_keys(referrer: str) -> tuple[str | None, str | None]:
    """``(domain, page)`` of a referrer, the keys ``/tock`` counts referrers by.

    The domain drops a leading ``www.``; the page is domain + path with no scheme, query,
    fragment or trailing slash: ``https://www.example.com/a/b/?q=1`` gives
    ``("example.com", "example.com/a/b")``. A referrer without a host (``android-app:``
    schemes aside) gives ``(None, None)``.
    """
    if len(referrer) > _MAX_CACHED_CHARS:
        return _referrer_keys(referrer)
    return _cached_referrer_keys(referrer)


def _referrer_keys(referrer: str) -> tuple[str | None, str | None]:
    text = referrer.strip()
    if "://" not in text and not text.startswith("//"):
        text = "//" + text  # "example.com/path" is a bare host + path
    domain, path = url_parts(text)
    if domain is None:
        return None, None
    if domain.startswith("www."):
        domain = domain[4:]
    page = domain + (path or "").rstrip("/")
    return domain, page


_cached_referrer_keys = lru_cache(maxsize=4096)(_referrer_keys)


_SHORT_UA_CHARS = 1024
"""Headers (parsed and stored parts together) up to this long share the large cache;
longer ones (no browser's) a small one: a client sending distinct long headers cycles
those 64 entries, and holds no more."""


def user_agent_fields(parse_text: str, original: str) -> tuple[FrozenDict, bool]:
    """The ``user_agent`` object for a header (cached, so shared between documents: frozen)."""
    if len(parse_text) + len(original) <= _SHORT_UA_CHARS:
        return _short_user_agent_fields(parse_text, original)
    return _long_user_agent_fields(parse_text, original)


def _user_agent_fields(parse_text: str, original: str) -> tuple[FrozenDict, bool]:
    ua = parse_user_agent(parse_text)
    agent: dict[str, Any] = {"original": original}
    if ua.name:
        agent["name"] = ua.name
    if ua.version:
        agent["version"] = ua.version
    os_part = {k: v for k, v in (("name", ua.os_name), ("version", ua.os_version)) if v}
    if os_part:
        agent["os"] = os_part
    if ua.device_name:
        agent["device"] = {"name": ua.device_name}
    return freeze(agent), ua.is_bot


_short_user_agent_fields = lru_cache(maxsize=4096)(_user_agent_fields)
_long_user_agent_fields = lru_cache(maxsize=64)(_user_agent_fields)


@lru_cache(maxsize=16_384)
def stored_address(address: str | None, policy: str) -> str | None:
    """What ``METRONOME_CLIENT_IP`` lets us store of ``address``: nothing (``drop``), its
    network (``truncate``: IPv4 /24, IPv6 /48) or all of it (``keep``). Cached: clients
    repeat, and the truncation goes through :mod:`ipaddress`."""
    if address is None or policy == "drop":
        return None
    if policy == "keep":
        return address
    ip = ipaddress.ip_address(address)
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


def flag_referrer_spam(source: dict[str, Any], blocklist: Sequence[str]) -> None:
    """Mark a document ``referrer.spam`` when its referrer domain, or a parent domain of
    it, is on ``blocklist`` (``METRONOME_REFERRER_BLOCKLIST``)."""
    referrer = source.get("referrer")
    if not referrer or not blocklist:
        return
    domain = referrer.get("domain") or ""
    blocked = _blocked if len(domain) > _MAX_DOMAIN_CHARS else _cached_blocked
    if blocked(domain, tuple(blocklist)):
        source["referrer"] = {**referrer, "spam": True}


_MAX_DOMAIN_CHARS = 253  # the longest name DNS has: a longer one is not cached


def _blocked(domain: str, blocklist: tuple[str, ...]) -> bool:
    """Whether ``domain`` or one of its parent domains is on ``blocklist`` (cached once
    per domain: this runs for every tick)."""
    return any(domain == blocked or domain.endswith("." + blocked) for blocked in blocklist)


_cached_blocked = lru_cache(maxsize=4096)(_blocked)
