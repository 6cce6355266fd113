"""The client side of Fluentd's forward-protocol handshake (``<security>`` with a
``shared_key``), as out_forward does it: read HELO, send PING, read PONG. Written from the
Forward Protocol Specification v1, so the tests check the server against the spec rather
than against itself."""

from __future__ import annotations

import hashlib
import secrets
import socket
from typing import Any

import msgpack

__all__ = ["HandshakeRefused", "handshake", "ping_for"]


class HandshakeRefused(Exception):
    """The server answered PONG with false (its reason is the message)."""


def _hex(*parts: bytes) -> str:
    return hashlib.sha512(b"".join(parts)).hexdigest()


def ping_for(
    helo: Any, shared_key: str, hostname: str, user: str = "", password: str = ""
) -> tuple[list[Any], bytes]:
    """The PING that answers ``helo`` with ``shared_key`` (and ``user`` and ``password``
    when the HELO asks for them with an ``auth`` salt), and the nonce it answers."""
    assert isinstance(helo, list) and len(helo) == 2 and helo[0] == "HELO", helo
    nonce = helo[1]["nonce"]
    nonce = nonce if isinstance(nonce, bytes) else nonce.encode()
    salt = secrets.token_hex(16).encode()
    digest = _hex(salt, hostname.encode(), nonce, shared_key.encode())
    auth = helo[1].get("auth") or b""
    if not auth:
        return ["PING", hostname, salt.decode(), digest, "", ""], nonce
    proof = _hex(auth, user.encode(), password.encode())
    return ["PING", hostname, salt.decode(), digest, user, proof], nonce


def handshake(sock: socket.socket, shared_key: str, hostname: str = "test-client") -> None:
    """Authenticate ``sock`` (a connected blocking socket); raises HandshakeRefused."""
    unpacker = msgpack.Unpacker(raw=False)

    def receive() -> Any:
        while True:
            for message in unpacker:
                return message
            data = sock.recv(4096)
            assert data, "closed during the handshake"
            unpacker.feed(data)

    ping, nonce = ping_for(receive(), shared_key, hostname)
    sock.sendall(msgpack.packb(ping))
    pong = receive()
    assert isinstance(pong, list) and len(pong) == 5 and pong[0] == "PONG", pong
    if not pong[1]:
        raise HandshakeRefused(pong[2])
    salt, server = ping[2].encode(), pong[3]
    assert server != hostname
    assert pong[4] == _hex(salt, server.encode(), nonce, shared_key.encode())
