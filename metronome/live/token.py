"""Short-lived signed tokens: how a browser opens a live connection or the dashboard reads
``/query`` without holding a key.

A key holder (a ``query`` or ``admin`` key) mints one with ``POST /live/token``. The
token names the site, the key it was minted with and when it expires, signed with
HMAC-SHA256 under the server's secret (``METRONOME_LIVE_SECRET``, else a random one kept in
the data directory with mode 0600). It is checked without the store: the signature, the
expiry, then (by the guard) that the key is still active. Revoking the key ends its
tokens at the next sites-cache refresh.

Format: ``mlt_`` + base64url(JSON claims) + ``.`` + base64url(HMAC of the part before
the dot).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import orjson

from metronome.config import Settings
from metronome.errors import InvalidKey

__all__ = ["TOKEN_PREFIX", "Claims", "TokenSigner", "is_token", "load_secret"]

TOKEN_PREFIX = "mlt_"
MAX_TOKEN_CHARS = 1024
SECRET_FILE = "live-secret"


@dataclass(frozen=True, slots=True)
class Claims:
    """What a valid token says: its site, the key that minted it (None while no site
    exists), and when it expires (epoch seconds)."""

    site_id: str
    key_id: str | None
    expires_s: int


def is_token(secret: str) -> bool:
    return secret.startswith(TOKEN_PREFIX)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_secret(settings: Settings) -> bytes:
    """The signing secret: ``METRONOME_LIVE_SECRET``, else the data directory's, made on
    first use (every worker of a host reads the same file; the first to start writes it)."""
    if settings.live_secret:
        return settings.live_secret.encode()
    path = Path(settings.data_dir) / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_hex(32).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(draft, path)  # fails when another worker got there first: use its secret
    except FileExistsError:
        pass
    finally:
        draft.unlink()
    return bytes.fromhex(path.read_text().strip())


class TokenSigner:
    """Mints and verifies tokens with one secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._secret, body.encode("ascii"), hashlib.sha256).digest())

    def mint(self, site_id: str, key_id: str | None, ttl_s: int, now_s: float) -> tuple[str, int]:
        """A token for ``site_id`` valid ``ttl_s`` seconds from ``now_s``, and its expiry."""
        expires = int(now_s) + ttl_s
        body = _b64(orjson.dumps({"s": site_id, "k": key_id, "e": expires}))
        return f"{TOKEN_PREFIX}{body}.{self._sign(body)}", expires

    def verify(self, token: str, now_s: float) -> Claims:
        """The claims of a genuine, unexpired token; else :class:`InvalidKey`."""
        if len(token) > MAX_TOKEN_CHARS or not is_token(token):
            raise InvalidKey("the token is not one this server minted")
        body, _, signature = token[len(TOKEN_PREFIX) :].partition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            raise InvalidKey("the token is not one this server minted (or was altered)")
        try:
            data = orjson.loads(_unb64(body))
            claims = Claims(str(data["s"]), data["k"], int(data["e"]))
        except (ValueError, KeyError, TypeError):
            raise InvalidKey("the token is not one this server minted") from None
        if claims.expires_s <= now_s:
            raise InvalidKey("the token has expired; mint another with POST /live/token")
        return claims
