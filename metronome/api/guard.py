"""Who may do what: keys, sites, origins, CORS and ingest rate limits.

Every request that touches events resolves to exactly one site, and resources only ever
see that site (:class:`Access`). The rules:

- **No site exists** (the single-user default): nothing needs a key (keys are not
  even looked at), any origin may send ticks, nothing is rate limited, and everything is
  stored and read as site ``default``.
- **With a key** (``Authorization: Bearer mk_...``): the key must be active and have the
  route's scope (``ingest`` to send ticks, ``query`` to read reports; ``admin`` allows
  both). The key decides the site; a request naming another site (``?site=``, a tick's
  ``site``) is refused with 403. An all-sites admin key names the site with ``?site=``.
- **Without a key**, browser ingest (``POST /tick``, ``/ticks``): the site is named with
  ``?site=<site id>`` (or the ticks' ``site`` field) and the request's ``Origin`` must be
  one the site allows. CORS preflights are answered for allowed origins only.
- **Without a key**, the pixel (``GET /tick.gif``): the site is named with ``?site=``;
  browsers send no ``Origin`` for images, so the ``Referer``'s origin is checked instead
  (the ``Origin`` when one is sent); a pixel with neither cannot be verified and is taken.
- **Without a key**, ``GET /tock``: only for a site with public item reports, named with
  ``?site=``.
- **With a token** (``mlt_...``, minted by ``POST /live/token`` with a key that may read):
  reads as its key would, for the token's site, until it expires or the key is revoked;
  as ``Authorization: Bearer`` or, where a browser cannot set headers (``GET /live``,
  ``/live/events``), ``?token=``. Live connections from a web page (an ``Origin``) are
  taken from the server's own pages (the dashboard) and, once sites exist, from the
  site's allowed origins.

Once a site exists, ingest is rate limited per site and, for requests without a key, per
client address (:mod:`metronome.api.ratelimit`). Nothing here waits for the store: sites
and keys come from the process's cached copy (:mod:`metronome.sites.cache`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import falcon
import falcon.asgi

from metronome.api.ratelimit import Buckets, address_key
from metronome.api.render import cors_headers
from metronome.config import Settings
from metronome.errors import (
    InvalidField,
    InvalidKey,
    InvalidParameter,
    KeyRequired,
    OriginForbidden,
    RateLimited,
    ScopeForbidden,
    SiteForbidden,
    UnknownSite,
)
from metronome.events.fields import DEFAULT_SITE
from metronome.live.token import Claims, TokenSigner, is_token, load_secret
from metronome.sites.cache import RegistryCache
from metronome.sites.model import Key, Snapshot, now_ms
from metronome.sites.registry import Registry

__all__ = ["BROWSER_PATHS", "Access", "Cors", "Guard", "named_sites", "referer_origin"]

BROWSER_PATHS = {"/tick", "/ticks"}
"""Routes a web page may call without a key (CORS preflights answered here)."""

_ALLOW_METHODS = "GET, POST, OPTIONS"
_PREFLIGHT_MAX_AGE = "600"


@dataclass(frozen=True, slots=True)
class Access:
    """The outcome of a check: the one site this request may touch, and how it got in
    (``open``: no sites exist; ``key``; ``origin``: browser ingest; ``public``: a
    public report)."""

    site_id: str
    via: str
    key: Key | None = None


def _site_param(req: falcon.asgi.Request) -> str | None:
    value = req.params.get("site")
    if isinstance(value, list):
        raise InvalidParameter("'site' is given more than once", parameter="site")
    return value or None


def named_sites(req: falcon.asgi.Request, ticks: Iterable[Any] = ()) -> set[str]:
    """Every site a request names: ``?site=`` and the ticks' ``site`` fields."""
    names: set[str] = set()
    param = _site_param(req)
    if param is not None:
        names.add(param)
    for tick in ticks:
        if isinstance(tick, dict):
            value = tick.get("site")
            if value is None:
                continue
            if not isinstance(value, str) or not value:
                raise InvalidField("'site' must be a site id (a string)", field="site")
            names.add(value)
    return names


def referer_origin(referer: str) -> str:
    """The origin (``scheme://host[:port]``) of a ``Referer`` header's URL, for checking
    against a site's origins; a value that is not an http(s) URL is returned as sent (it
    then matches only a site that allows any origin, ``*``)."""
    try:
        parts = urlsplit(referer)
        port = parts.port
    except ValueError:
        return referer
    host = parts.hostname
    if parts.scheme.lower() not in ("http", "https") or not host:
        return referer
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    return f"{parts.scheme.lower()}://{host}" + ("" if port is None else f":{port}")


def _bearer(req: falcon.asgi.Request) -> str | None:
    header = req.get_header("Authorization")
    if header is None:
        return None
    scheme, _, secret = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise InvalidKey("send the key as 'Authorization: Bearer mk_...'")
    return secret.strip()


def _one_site(names: set[str]) -> str | None:
    if len(names) > 1:
        shown = ", ".join(repr(n[:64]) for n in sorted(names)[:5])
        raise InvalidField(f"a request writes to one site; it names {shown}", field="site")
    return next(iter(names), None)


def _unknown(name: str) -> UnknownSite:
    return UnknownSite(
        f"there is no site {name[:64]!r}; `metronome sites list` shows them", site=name[:64]
    )


_LISTED_SITES = 1000  # an admin key told to name a site is shown at most this many


class Guard:
    """Checks requests against the cached sites and keys; resources call it first."""

    def __init__(self, settings: Settings, cache: RegistryCache) -> None:
        self._cache = cache
        self._settings = settings
        self._signer: TokenSigner | None = None
        self._per_ip = Buckets(
            settings.rate_limit_per_ip, settings.rate_limit_per_ip_burst, "client address"
        )
        self._per_site = Buckets(
            settings.rate_limit_per_site, settings.rate_limit_per_site_burst, "site"
        )

    @property
    def registry(self) -> Registry:
        return self._cache.registry

    async def start(self) -> None:
        await self._cache.start()
        self._signer = TokenSigner(load_secret(self._settings))

    def _tokens(self) -> TokenSigner:
        if self._signer is None:  # before the lifespan started (tests of the app object)
            self._signer = TokenSigner(load_secret(self._settings))
        return self._signer

    async def close(self) -> None:
        await self._cache.close()

    async def snapshot(self) -> Snapshot:
        return await self._cache.get()

    def _key(self, snapshot: Snapshot, secret: str) -> Key:
        key = snapshot.key_for(secret)
        if key is None:
            raise InvalidKey("the key is unknown or revoked")
        self._cache.note_use(key.id, now_ms())
        return key

    def _with_key(
        self, snapshot: Snapshot, secret: str, names: set[str], scope: str, route: str
    ) -> Access:
        key = self._key(snapshot, secret)
        if not key.allows(scope):
            raise ScopeForbidden(
                f"{route} needs a key with the {scope} (or admin) scope; this key has"
                f" {', '.join(sorted(key.scopes))}",
                scope=scope,
            )
        if key.site_id is not None:
            others = sorted(n for n in names if n != key.site_id)
            if others:
                raise SiteForbidden(
                    f"this key is for site {key.site_id!r}, not {others[0][:64]!r}",
                    site=others[0][:64],
                )
            return Access(key.site_id, "key", key)
        name = _one_site(names)
        if name is None:  # the key is authenticated and covers every site: list them
            raise InvalidParameter(
                "this admin key covers every site: name one with ?site=<site id>",
                parameter="site",
                sites=sorted(snapshot.sites)[:_LISTED_SITES],
            )
        if name not in snapshot.sites:
            raise _unknown(name)
        return Access(name, "key", key)

    async def precheck_ingest(self, req: falcon.asgi.Request, client_ip: str | None) -> None:
        """What can be refused before a body is read (cost before work): a key that is
        unknown or lacks the ingest scope; without a key, a request with no ``Origin``
        (401) or from a page no site takes ticks from (the ``?site=`` one when named,
        403); then a client address whose bucket is empty (429). :meth:`ingest` checks
        the rest (the sites the ticks name) once the body is read."""
        snapshot = await self._cache.get()
        if snapshot.open:
            return
        secret = _bearer(req)
        if secret is not None:
            key = snapshot.key_for(secret)
            if key is None:
                raise InvalidKey("the key is unknown or revoked")
            if not key.allows("ingest"):
                raise ScopeForbidden(
                    f"{req.path} needs a key with the ingest (or admin) scope; this key has"
                    f" {', '.join(sorted(key.scopes))}",
                    scope="ingest",
                )
            return  # a key is limited per site, once the site is known
        origin = req.get_header("Origin")
        if origin is None:
            raise KeyRequired(
                "ticks without a key are taken from web pages only (with an Origin"
                " header); a server sends 'Authorization: Bearer <key with the ingest"
                " scope>'"
            )
        name = _site_param(req)
        site = snapshot.sites.get(name) if name is not None else None
        if site is not None and not site.allows_origin(origin):
            raise OriginForbidden(
                f"site {site.id!r} does not take ticks from pages at {origin[:200]!r};"
                " allow the origin with `metronome sites update`",
                origin=origin[:200],
                site=site.id,
            )
        if name is None and not any(s.allows_origin(origin) for s in snapshot.sites.values()):
            raise OriginForbidden(
                f"no site takes ticks from pages at {origin[:200]!r}", origin=origin[:200]
            )
        if not self._per_ip.enabled:
            return
        try:
            self._per_ip.check(address_key(client_ip or "-"))
        except RateLimited:
            await self._allow_origin_of_refusal(req)
            raise

    async def charge_refused(
        self, req: falcon.asgi.Request, client_ip: str | None, count: int
    ) -> None:
        """Spend ``count`` from the client address's bucket for a body refused whole (too
        many ticks) without a key: sending one again and again runs the bucket dry."""
        if not self._per_ip.enabled or req.get_header("Authorization") is not None:
            return
        if (await self._cache.get()).open:
            return
        self._per_ip.spend(address_key(client_ip or "-"), count)

    async def _allow_origin_of_refusal(self, req: falcon.asgi.Request) -> None:
        """Let a page read a refusal when its origin may send ticks (the site is not
        known yet: the ``?site=`` one, or any)."""
        origin = req.get_header("Origin")
        if origin is None:
            return
        snapshot = await self._cache.get()
        named = req.params.get("site")  # a list when repeated: then no one site is named
        site = snapshot.sites.get(named) if isinstance(named, str) else None
        if snapshot.open or (
            site.allows_origin(origin)
            if site is not None
            else any(s.allows_origin(origin) for s in snapshot.sites.values())
        ):
            req.context.cors_origin = origin

    async def ingest(
        self,
        req: falcon.asgi.Request,
        names: set[str],
        client_ip: str | None,
        count: int,
        *,
        image: bool = False,
    ) -> Access:
        """The site ``count`` ticks go to (``names``: :func:`named_sites`), or an error;
        then the rate limits.

        ``image``: the request is an image's (``GET /tick.gif``), and browsers send no
        ``Origin`` for images. Without a key, its ``Origin`` is checked when one is sent,
        else the origin of its ``Referer`` (the page showing the image); a request with
        neither (an e-mail client, ``Referrer-Policy: no-referrer``) cannot be verified and
        is taken.
        """
        snapshot = await self._cache.get()
        origin = req.get_header("Origin")
        if snapshot.open:
            if names - {DEFAULT_SITE}:
                raise UnknownSite(
                    f"there is no site {sorted(names - {DEFAULT_SITE})[0][:64]!r}: no sites"
                    " are configured, so ticks go to the default site; leave 'site' out"
                )
            if origin is not None:
                req.context.cors_origin = origin
            return Access(DEFAULT_SITE, "open")  # as before sites existed: no limits either
        secret = _bearer(req)
        if secret is not None:
            access = self._with_key(snapshot, secret, names, "ingest", req.path)
        else:
            name = _one_site(names)
            if name is None:
                raise KeyRequired(
                    "name the site: from a web page with ?site=<site id> (its"
                    " origin must be allowed), from a server with"
                    " 'Authorization: Bearer <key with the ingest scope>'"
                )
            site = snapshot.sites.get(name)
            if site is None:
                raise _unknown(name)
            page = origin
            if page is None and image:
                referer = req.get_header("Referer")
                page = None if referer is None else referer_origin(referer)
            if page is None:
                if not image:
                    raise KeyRequired(
                        "ticks without a key are taken from web pages only"
                        " (with an Origin header); a server sends"
                        " 'Authorization: Bearer <key with the ingest scope>'"
                    )
            elif not site.allows_origin(page):
                raise OriginForbidden(
                    f"site {site.id!r} does not take ticks from pages at {page[:200]!r};"
                    " allow the origin with `metronome sites update`",
                    origin=page[:200],
                    site=site.id,
                )
            elif origin is not None:
                req.context.cors_origin = origin
            access = Access(site.id, "origin")
        per_ip = access.key is None and self._per_ip.enabled
        ip_key = address_key(client_ip or "-") if per_ip else ""
        if per_ip:
            self._per_ip.check(ip_key)
        self._per_site.check(access.site_id)
        if per_ip:
            self._per_ip.spend(ip_key, count)
        self._per_site.spend(access.site_id, count)
        return access

    async def read(self, req: falcon.asgi.Request, *, public_ok: bool = False) -> Access:
        """The site whose reports this request may read (``query`` scope), or an error.

        ``public_ok``: a site with public item reports may be read without a key
        (``/tock``). ``/query`` and ``/reports`` call ``read(req)`` and keep every report
        they run to ``access.site_id``.
        """
        snapshot = await self._cache.get()
        names = named_sites(req)
        if snapshot.open:
            if names - {DEFAULT_SITE}:
                raise UnknownSite(
                    f"there is no site {sorted(names - {DEFAULT_SITE})[0][:64]!r}:"
                    " no sites are configured; leave 'site' out"
                )
            return Access(DEFAULT_SITE, "open")
        secret = _bearer(req)
        if secret is not None and is_token(secret):
            return (await self._token_access(snapshot, secret, names))[0]
        if secret is not None:
            return self._with_key(snapshot, secret, names, "query", req.path)
        name = _one_site(names)
        site = snapshot.sites.get(name) if name is not None else None
        if name is not None and site is None:
            raise _unknown(name)
        if public_ok and site is not None and site.public_tock:
            req.context.cors_origin = "*"
            return Access(site.id, "public")
        raise KeyRequired(
            f"{req.path} needs 'Authorization: Bearer <key with the query"
            " scope>'"
            + (
                f"; site {name!r}'s item reports are not public"
                if name is not None and public_ok
                else ""
            )
        )

    async def probe(self, req: falcon.asgi.Request) -> Access:
        """The site a remote probe's results go to: a key with the ``probe`` (or admin)
        scope once a site exists (its site; an all-sites admin key names one with
        ``?site=``); anything while no site exists, stored as site ``default``."""
        snapshot = await self._cache.get()
        names = named_sites(req)
        if snapshot.open:
            if names - {DEFAULT_SITE}:
                raise _unknown(sorted(names - {DEFAULT_SITE})[0])
            return Access(DEFAULT_SITE, "open")
        secret = _bearer(req)
        if secret is None:
            raise KeyRequired(
                f"{req.path} needs 'Authorization: Bearer <key with the probe scope>'"
            )
        return self._with_key(snapshot, secret, names, "probe", req.path)

    async def _token_access(
        self, snapshot: Snapshot, token: str, names: set[str]
    ) -> tuple[Access, int]:
        """The access a token grants (and when it ends): its site, while its key may read.

        A token is signed by this deployment's secret, so a key it names that this process
        does not know yet was made since its copy of the keys was read (another process
        minted the token right after the key was created): the copy is read again once
        (:meth:`~metronome.sites.cache.RegistryCache.refresh`, at most twice a second) before
        the token is refused. Unsigned or expired tokens are refused before that."""
        claims = self._tokens().verify(token, time.time())
        if not snapshot.open and claims.key_id not in snapshot.by_id:
            snapshot = await self._cache.refresh()
        return self._with_token(snapshot, claims, names)

    def _with_token(
        self, snapshot: Snapshot, claims: Claims, names: set[str]
    ) -> tuple[Access, int]:
        if snapshot.open:
            if claims.site_id != DEFAULT_SITE:
                raise InvalidKey("the token is for a site that does not exist")
            return Access(DEFAULT_SITE, "token"), claims.expires_s
        key = snapshot.by_id.get(claims.key_id) if claims.key_id is not None else None
        if key is None:
            raise InvalidKey("the key that minted this token no longer exists; sign in again")
        if not key.active or not key.allows("query"):
            raise InvalidKey("the key that minted this token was revoked; sign in again")
        if claims.site_id not in snapshot.sites:
            raise _unknown(claims.site_id)
        others = sorted(n for n in names if n != claims.site_id)
        if others:
            raise SiteForbidden(
                f"this token is for site {claims.site_id!r}, not {others[0][:64]!r}",
                site=others[0][:64],
            )
        return Access(claims.site_id, "token", key), claims.expires_s

    async def still_reads(self, access: Access) -> bool:
        """Whether ``access`` (a live connection's) may still read: its key is active and
        its site exists (checked against the cached sites at every heartbeat)."""
        snapshot = await self._cache.get()
        if access.key is None:
            return snapshot.open == (access.via in ("open", "token"))
        key = snapshot.by_id.get(access.key.id)
        return (
            key is not None
            and key.active
            and key.allows("query")
            and (key.site_id is None or key.site_id in snapshot.sites)
            and access.site_id in snapshot.sites
        )

    async def mint_token(self, req: falcon.asgi.Request) -> dict[str, Any]:
        """``POST /live/token``: a token for the site the caller's key reads."""
        access = await self.read(req)
        if access.via == "token":
            raise InvalidKey("mint a token with a key, not with another token")
        ttl_s = self._settings.live_token_ttl_s
        token, expires_s = self._tokens().mint(
            access.site_id, None if access.key is None else access.key.id, ttl_s, time.time()
        )
        return {"token": token, "site": access.site_id, "expires_s": expires_s, "ttl_s": ttl_s}

    async def live(self, req: falcon.asgi.Request) -> tuple[Access, int | None]:
        """Who opens a live connection (``GET /live``, ``/live/events``), and until when:
        a token (``?token=`` or bearer) or a key that may read; then its page's origin."""
        snapshot = await self._cache.get()
        token = req.params.get("token")
        if isinstance(token, list):
            raise InvalidParameter("'token' is given more than once", parameter="token")
        if token is None:
            bearer = _bearer(req)
            token = bearer if bearer is not None and is_token(bearer) else None
        if token is not None:
            access, expires = await self._token_access(snapshot, token, named_sites(req))
        else:
            access, expires = await self.read(req), None
        origin = req.get_header("Origin")
        own_host = (req.get_header("Host") or "").lower()
        if origin is not None and urlsplit(origin).netloc.lower() != own_host:
            site = snapshot.sites.get(access.site_id)
            if site is None or not site.allows_origin(origin):
                raise OriginForbidden(
                    f"live connections from pages at {origin[:200]!r} are not allowed"
                    + (
                        ": while no site exists, only this server's own pages may connect"
                        if snapshot.open
                        else f"; allow the origin for site {access.site_id!r}"
                    ),
                    origin=origin[:200],
                )
        return access, expires

    async def preflight(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Answer a CORS preflight for a browser route: 204 for allowed origins (the named
        site's, or any site's when none is named), else 403."""
        origin = req.get_header("Origin")
        if origin is None:
            return  # not CORS: Falcon answers OPTIONS itself
        snapshot = await self._cache.get()
        name = _site_param(req)
        if snapshot.open:
            allowed = True
        elif name is not None:
            site = snapshot.sites.get(name)
            if site is None:
                raise _unknown(name)
            allowed = site.allows_origin(origin)
        else:
            allowed = any(site.allows_origin(origin) for site in snapshot.sites.values())
        if not allowed:
            raise OriginForbidden(
                f"no site takes ticks from pages at {origin[:200]!r}"
                + (f" (site {name!r})" if name else ""),
                origin=origin[:200],
            )
        resp.status = falcon.HTTP_204
        resp.set_header("Access-Control-Allow-Origin", origin)
        resp.set_header("Access-Control-Allow-Methods", _ALLOW_METHODS)
        resp.set_header("Access-Control-Allow-Headers", "Content-Type")
        resp.set_header("Access-Control-Max-Age", _PREFLIGHT_MAX_AGE)
        resp.set_header("Vary", "Origin")
        resp.complete = True


class Cors:
    """Middleware: answers preflights on browser routes and adds
    ``Access-Control-Allow-Origin`` to answers (errors included) the guard let in."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if req.method == "OPTIONS" and req.path.rstrip("/") in BROWSER_PATHS:
            await self._guard.preflight(req, resp)

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        for name, value in cors_headers(getattr(req.context, "cors_origin", None)).items():
            resp.set_header(name, value)
