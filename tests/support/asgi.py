"""Requests made straight to an ASGI app, without a server: for in-process tests and the
``accept`` benchmark."""

from __future__ import annotations

from typing import Any

__all__ = ["post_scope"]


def post_scope(
    path: str,
    headers: list[tuple[bytes, bytes]],
    *,
    query: bytes = b"",
    client: tuple[str, int] = ("127.0.0.1", 40000),
) -> dict[str, Any]:
    """The ASGI scope of an HTTP/1.1 ``POST`` to ``path`` on 127.0.0.1:8080."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": client,
        "server": ("127.0.0.1", 8080),
    }
