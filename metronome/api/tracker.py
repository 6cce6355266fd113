"""``GET /metronome.js``: the browser tracker, cached by browsers and revalidated by ETag.

The script (``metronome/static/metronome.js``) is read and gzipped once when the app is
built; each encoding has its own strong ETag (a digest of the script, ``-gz`` for the gzip
body), answers ``304`` to a matching ``If-None-Match`` and ``Vary: Accept-Encoding``.
"""

from __future__ import annotations

import gzip
import hashlib
from importlib import resources

import falcon
import falcon.asgi

__all__ = ["CACHE_CONTROL", "Script", "accepts_gzip", "tracker_source"]

# An hour: pages pick up a new tracker soon after an upgrade; revalidating is a cheap 304.
CACHE_CONTROL = "public, max-age=3600"


def tracker_source() -> bytes:
    """The tracker script as shipped in the package."""
    return resources.files("metronome").joinpath("static/metronome.js").read_bytes()


def accepts_gzip(header: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header allows gzip (``gzip``/``x-gzip`` or ``*``, q > 0)."""
    if not header:
        return False
    wildcard: bool | None = None
    for part in header.split(","):
        name, _, rest = part.strip().partition(";")
        name = name.strip().lower()
        q = 1.0
        rest = rest.strip().lower()
        if rest.startswith("q="):
            try:
                q = float(rest[2:])
            except ValueError:
                q = 0.0
        if name in ("gzip", "x-gzip"):
            return q > 0
        if name == "*":
            wildcard = q > 0
    return bool(wildcard)


def _matches(if_none_match: str, etags: tuple[str, ...]) -> bool:
    """RFC 9110 weak comparison: ``*`` or any listed tag, ``W/`` ignored."""
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*":
            return True
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag in etags:
            return True
    return False


class Script:
    """Serves the tracker; ``source`` is for tests (default: the packaged file)."""

    def __init__(self, source: bytes | None = None) -> None:
        self._plain = tracker_source() if source is None else source
        self._gzip = gzip.compress(self._plain, compresslevel=9, mtime=0)
        digest = hashlib.sha256(self._plain).hexdigest()[:32]
        self._etag_plain = f'"{digest}"'
        self._etag_gzip = f'"{digest}-gz"'

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        zipped = accepts_gzip(req.get_header("Accept-Encoding"))
        etag = self._etag_gzip if zipped else self._etag_plain
        resp.content_type = "text/javascript; charset=utf-8"
        resp.cache_control = [CACHE_CONTROL]
        resp.vary = ["Accept-Encoding"]
        resp.set_header("ETag", etag)
        # pages that demand Cross-Origin-Resource-Policy (COEP) may still load it
        resp.set_header("Cross-Origin-Resource-Policy", "cross-origin")
        resp.set_header("X-Content-Type-Options", "nosniff")
        if_none_match = req.get_header("If-None-Match")
        if if_none_match and _matches(if_none_match, (self._etag_plain, self._etag_gzip)):
            resp.status = falcon.HTTP_304
            resp.content_type = None
            return
        if zipped:
            resp.set_header("Content-Encoding", "gzip")
        resp.data = self._gzip if zipped else self._plain

    on_head = on_get  # the server sends the headers only
