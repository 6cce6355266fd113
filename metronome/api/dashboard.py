"""``GET /dashboard`` (the page) and ``GET /dashboard/{asset}`` (its script and styles).

The dashboard is plain HTML, JavaScript and CSS committed under
``metronome/static/dashboard/``: no build step, no framework. It reads everything through
the public API (``POST /query``, ``GET /tock/{id}``, ``GET /live``/``/live/events``) with
a short-lived token it gets from ``POST /live/token`` at sign-in; this resource only serves
files.
"""

from __future__ import annotations

import gzip
import hashlib
from importlib import resources

import falcon
import falcon.asgi

from metronome.errors import NotFound
from metronome.live.dashboard import page_config

from .tracker import accepts_gzip

__all__ = ["ASSETS", "Dashboard", "dashboard_asset"]

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
"""The dashboard's files and their media types."""

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def dashboard_asset(name: str) -> bytes:
    return resources.files("metronome").joinpath(f"static/dashboard/{name}").read_bytes()


_CONFIG_MARK = b"{{config}}"
"""Where the page carries its panels (:func:`metronome.live.dashboard.page_config`)."""


class _File:
    def __init__(self, name: str) -> None:
        self.type = ASSETS[name]
        self.plain = dashboard_asset(name)
        if name == "index.html":  # JSON in a data block: "</" cannot end it early
            self.plain = self.plain.replace(_CONFIG_MARK, page_config().replace(b"</", b"<\\/"))
        self.gzip = gzip.compress(self.plain, compresslevel=9, mtime=0)
        self.etag = '"' + hashlib.sha256(self.plain).hexdigest()[:32] + '"'


class Dashboard:
    def __init__(self) -> None:
        self._files = {name: _File(name) for name in ASSETS}

    def _send(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str) -> None:
        file = self._files[name]
        zipped = accepts_gzip(req.get_header("Accept-Encoding"))
        etag = file.etag[:-1] + ('-gz"' if zipped else '"')
        resp.content_type = file.type
        resp.cache_control = ["no-cache"]  # revalidated each time: a cheap 304
        resp.vary = ["Accept-Encoding"]
        resp.set_header("ETag", etag)
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("Content-Security-Policy", _CSP)
        resp.set_header("Referrer-Policy", "no-referrer")
        if req.get_header("If-None-Match") == etag:
            resp.status = falcon.HTTP_304
            resp.content_type = None
            return
        if zipped:
            resp.set_header("Content-Encoding", "gzip")
        resp.data = file.gzip if zipped else file.plain

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self._send(req, resp, "index.html")

    async def on_get_asset(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, asset: str
    ) -> None:
        if asset not in self._files or asset == "index.html":
            raise NotFound(
                f"no dashboard file {asset[:64]!r}; the page is GET /dashboard", asset=asset[:64]
            )
        self._send(req, resp, asset)
