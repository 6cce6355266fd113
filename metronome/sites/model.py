"""Sites and keys: what they are, how ids and secrets are made, how origins match.

A **site** is one web site or app whose events are kept apart from every other site's:
a public id (it appears in web pages), a name, the origins its pages may send ticks
from, whether its item reports (``/tock``) are public, and whether it opts in to storing
raw client addresses (``store_ip``; without it addresses are dropped or truncated, see
the privacy guide).

A **key** is a random secret (``mk_`` + 43 url-safe characters: 256 random bits) shown
once when it is created. Only its SHA-256 is stored. A slow password hash (bcrypt,
scrypt, argon2) protects low-entropy secrets people choose; a key is never guessed from
its hash because there is nothing smaller than 2^256 to search, so a fast hash is as
safe here and keeps the per-request check a dictionary lookup. A key has scopes
(``ingest``: send ticks; ``query``: read reports; ``admin``: everything; ``probe``: post
remote probes' monitor results, and nothing else), belongs to
one site (an ``admin`` key may instead cover all sites), and can be revoked.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from metronome.events.fields import SITE_ID_PATTERN

__all__ = [
    "KEY_PREFIX",
    "SCOPES",
    "SITE_ID_PATTERN",
    "Key",
    "NewKey",
    "Site",
    "Snapshot",
    "hash_secret",
    "new_key",
    "new_site_id",
    "normalize_origin",
    "parse_origin_rule",
]

SCOPES = ("ingest", "query", "admin", "probe")
KEY_PREFIX = "mk_"
_KEY_PATTERN = re.compile(r"^mk_[A-Za-z0-9_-]{43}$")
_SITE_ID_ALPHABET = string.ascii_lowercase + string.digits
_DEFAULT_PORTS = {"http": 80, "https": 443}


def now_ms() -> int:
    return int(time.time() * 1000)


def new_site_id() -> str:
    """10 random lowercase letters and digits (about 52 bits): short, url-safe, public."""
    return "".join(secrets.choice(_SITE_ID_ALPHABET) for _ in range(10))


def hash_secret(secret: str) -> str:
    """The stored form of a key: SHA-256, hex (see the module docstring for why)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def looks_like_key(secret: str) -> bool:
    return bool(_KEY_PATTERN.match(secret))


# -- origins ---------------------------------------------------------------------------


def normalize_origin(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an ``Origin`` header, or None when it is not one
    (``null``, a path, a user name, a scheme other than http/https, over 2048 characters:
    checked before the cache, which must never hold what a client chose to make long)."""
    return None if len(origin) > 2048 else _normalize_origin(origin)


@lru_cache(maxsize=4096)
def _normalize_origin(text: str) -> tuple[str, str, int] | None:
    if "://" not in text or any(c.isspace() or c < " " for c in text):
        return None  # urlsplit would drop tabs and newlines: never match what was not sent
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if (
        scheme not in _DEFAULT_PORTS
        or not host
        or parts.username is not None
        or parts.password is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        return None
    return scheme, host, port or _DEFAULT_PORTS[scheme]


@dataclass(frozen=True, slots=True)
class OriginRule:
    """One allowed origin: exact (``https://example.org``), every subdomain of a domain
    (``https://*.example.org``: ``a.example.org``, ``a.b.example.org``, never
    ``example.org`` itself), or ``*`` (any origin)."""

    text: str
    scheme: str = ""
    host: str = ""  # for a wildcard: ".example.org"
    port: int = 0
    wildcard: bool = False
    anything: bool = False

    def matches(self, origin: tuple[str, str, int]) -> bool:
        if self.anything:
            return True
        scheme, host, port = origin
        if scheme != self.scheme or port != self.port:
            return False
        if self.wildcard:
            return host.endswith(self.host) and len(host) > len(self.host)
        return host == self.host


def parse_origin_rule(text: str) -> OriginRule:
    """Validate and normalise an allowed origin; ValueError says what is wrong."""
    text = text.strip()
    if text == "*":
        return OriginRule("*", anything=True)
    wildcard = False
    probe = text.rstrip("/")
    if "://*." in text:
        wildcard = True
        probe = probe.replace("://*.", "://", 1)
    parsed = normalize_origin(probe)
    if parsed is None or "*" in probe:
        raise ValueError(
            f"{text!r} is not an origin: give scheme and host (and a port if not the"
            " default), like https://example.org, https://*.example.org or"
            " http://localhost:8000, without a path"
        )
    scheme, host, port = parsed
    default = port == _DEFAULT_PORTS[scheme]
    shown_host = f"*.{host}" if wildcard else host
    shown = f"{scheme}://{shown_host}" + ("" if default else f":{port}")
    return OriginRule(shown, scheme, "." + host if wildcard else host, port, wildcard)


# -- sites and keys -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Site:
    id: str
    name: str
    origins: tuple[str, ...] = ()
    public_tock: bool = False
    store_ip: bool = False
    created_ms: int = 0
    _rules: tuple[OriginRule, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not SITE_ID_PATTERN.match(self.id):
            raise ValueError(
                f"site id {self.id!r}: use 1 to 64 lowercase letters, digits,"
                " '-' and '_', starting with a letter or digit"
            )
        rules = tuple(parse_origin_rule(o) for o in self.origins)
        object.__setattr__(self, "origins", tuple(dict.fromkeys(r.text for r in rules)))
        object.__setattr__(self, "_rules", rules)

    def allows_origin(self, origin: str) -> bool:
        """Whether a page at ``origin`` (an ``Origin`` header) may send this site ticks."""
        parsed = normalize_origin(origin)
        if parsed is None:
            return any(r.anything for r in self._rules) and origin.strip() != ""
        return any(r.matches(parsed) for r in self._rules)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "origins": list(self.origins),
            "public_tock": self.public_tock,
            "store_ip": self.store_ip,
            "created": self.created_ms,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Site:
        return cls(
            str(data["id"]),
            str(data.get("name") or ""),
            tuple(data.get("origins") or ()),
            bool(data.get("public_tock")),
            bool(data.get("store_ip")),
            int(data.get("created") or 0),
        )


@dataclass(frozen=True, slots=True)
class Key:
    """A stored key: never the secret, only its hash and the first characters (``prefix``)
    so people can tell their keys apart."""

    id: str
    hash: str
    prefix: str
    site_id: str | None  # None: every site (admin keys only)
    scopes: frozenset[str]
    name: str = ""
    created_ms: int = 0
    last_used_ms: int | None = None
    revoked_ms: int | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    @property
    def active(self) -> bool:
        return self.revoked_ms is None

    def to_dict(self, *, with_hash: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "prefix": self.prefix,
            "site": self.site_id,
            "scopes": sorted(self.scopes, key=SCOPES.index),
            "name": self.name,
            "created": self.created_ms,
            "last_used": self.last_used_ms,
            "revoked": self.revoked_ms,
        }
        if with_hash:
            data["hash"] = self.hash
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Key:
        def _ms(value: Any) -> int | None:
            return None if value is None else int(value)

        return cls(
            str(data["id"]),
            str(data["hash"]),
            str(data.get("prefix") or ""),
            data.get("site") or None,
            frozenset(data.get("scopes") or ()),
            str(data.get("name") or ""),
            int(data.get("created") or 0),
            _ms(data.get("last_used")),
            _ms(data.get("revoked")),
        )


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just made: ``secret`` is shown once and then exists nowhere."""

    key: Key
    secret: str


def new_key(site_id: str | None, scopes: Iterable[str], name: str = "") -> NewKey:
    """A fresh random key for ``site_id`` (None: every site, admin only)."""
    scope_set = frozenset(scopes)
    unknown = scope_set - set(SCOPES)
    if not scope_set or unknown:
        raise ValueError(
            f"scopes are {', '.join(SCOPES)}; got {', '.join(sorted(scope_set))}"
            if scope_set
            else "a key needs at least one scope"
        )
    if site_id is None and "admin" not in scope_set:
        raise ValueError("only an admin key may cover all sites; name a site")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = Key(
        secrets.token_hex(6), hash_secret(secret), secret[:7], site_id, scope_set, name, now_ms()
    )
    return NewKey(key, secret)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every site and key at one moment; what a server process checks requests against."""

    sites: dict[str, Site]
    keys: tuple[Key, ...]
    by_hash: dict[str, Key] = field(default_factory=dict, compare=False, repr=False)
    by_id: dict[str, Key] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.by_hash:
            object.__setattr__(self, "by_hash", {k.hash: k for k in self.keys if k.active})
        if not self.by_id:  # revoked keys too: a token of one is refused as revoked
            object.__setattr__(self, "by_id", {k.id: k for k in self.keys})

    @classmethod
    def empty(cls) -> Snapshot:
        return cls({}, ())

    @property
    def open(self) -> bool:
        """No site yet: the single-user default, where nothing needs a key."""
        return not self.sites

    def key_for(self, secret: str) -> Key | None:
        """The active key whose secret this is, or None."""
        return self.by_hash.get(hash_secret(secret)) if looks_like_key(secret) else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "sites": [s.to_dict() for s in self.sites.values()],
            "keys": [k.to_dict() for k in self.keys],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        sites = [Site.from_dict(s) for s in data.get("sites") or ()]
        return cls(
            {s.id: s for s in sites}, tuple(Key.from_dict(k) for k in data.get("keys") or ())
        )
