"""Reading request bodies within limits, decoding JSON, and query-string parameters."""

from __future__ import annotations

import asyncio
from typing import Any

import falcon.asgi
import orjson

from metronome.errors import (
    InvalidJSON,
    InvalidParameter,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)

__all__ = [
    "decode_json",
    "read_body",
    "require_content_type",
    "single_params",
    "unsupported_media_type",
]


def require_content_type(req: falcon.asgi.Request, allowed: tuple[str, ...]) -> str:
    """The request's media type, if it is one of ``allowed``; else 415 naming them."""
    media = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media not in allowed:
        raise unsupported_media_type(media, allowed)
    return media


def unsupported_media_type(media: str, allowed: tuple[str, ...]) -> UnsupportedMediaType:
    """The 415 for a body sent as ``media``, naming the ``allowed`` types."""
    return UnsupportedMediaType(
        f"send the body as {' or '.join(allowed)}"
        f" (got {media or 'no Content-Type'}); with curl add"
        " -H 'Content-Type: application/json'",
        allowed=list(allowed),
    )


async def read_body(
    req: falcon.asgi.Request, max_bytes: int, timeout_s: float | None = None
) -> bytes:
    """The whole body, refusing (413) anything over ``max_bytes`` before reading it all,
    and (408) a body that takes longer than ``timeout_s`` to arrive."""
    if req.content_length is not None and req.content_length > max_bytes:
        raise PayloadTooLarge(
            f"the body is {req.content_length} bytes; the limit is {max_bytes}",
            limit=max_bytes,
        )
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in req.stream:
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(
                        f"the body is over the limit of {max_bytes} bytes", limit=max_bytes
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"the body did not arrive within {timeout_s:g} s ({size} bytes came)", limit_s=timeout_s
        ) from None
    return b"".join(chunks)


def decode_json(data: bytes, what: str = "the body") -> Any:
    """Parse JSON, with a 400 that says where it broke."""
    if not data.strip():
        raise InvalidJSON(f"{what} is empty; send a JSON object")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"{what} is not valid JSON: {exc}") from None


def single_params(req: falcon.asgi.Request) -> dict[str, str]:
    """The query string as one value per name; a repeated name is a 400."""
    params: dict[str, str] = {}
    for key, value in req.params.items():
        if isinstance(value, list):
            raise InvalidParameter(f"'{key}' is given more than once", parameter=key)
        params[key] = value
    return params
