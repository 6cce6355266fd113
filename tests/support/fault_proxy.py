"""A TCP relay in front of a real store that can take it off the network or freeze it.

:class:`FaultProxy` listens on a free loopback port and relays every connection, byte for
byte, to the store behind it (the suite's real Elasticsearch or OpenSearch). Metronome is
pointed at the relay, so a test can break the path to the store without stopping the
store itself (a JVM restart costs a minute of CPU on two busy cores, and a server shared
by the test processes must never stop):

- :meth:`FaultProxy.down` is a store that went away: the open connections are reset and
  new ones are refused (nothing listens on the port), as when the store's process ends;
  :meth:`FaultProxy.up` is the store back on the same address.
- :meth:`FaultProxy.frozen` is a store that stops answering (as a node in a long garbage
  collection or on a saturated disk, or a process stopped with SIGSTOP): connections are
  still accepted and kept open, nothing is read or answered; afterwards everything sent
  meanwhile reaches the store, which applies it (requests the client gave up on included).

Not a test double: the store is real and answers everything that gets through.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlsplit

from tests.support.es_server import free_port

__all__ = ["FaultProxy"]


class FaultProxy:
    """A relay to ``upstream`` (``http://host:port``) at :attr:`url`; start with ``with``."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname is not None and parts.port is not None, upstream
        self._target = (parts.hostname, parts.port)
        self._scheme = parts.scheme
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._call(self._make_event())
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._close(), ignore_errors=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def up(self) -> None:
        """Listen (again) on :attr:`port` and relay."""
        self._call(self._listen())

    def down(self) -> None:
        """Refuse new connections and reset the open ones."""
        self._call(self._close())

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Accept connections but neither read nor answer them until the block ends."""
        self._call(self._set_flowing(False))
        try:
            yield
        finally:
            self._call(self._set_flowing(True))

    def _call(self, coro: Any, ignore_errors: bool = False) -> None:
        future: Future[None] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            future.result(timeout=30)
        except Exception:
            if not ignore_errors:
                raise

    async def _make_event(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._relay, "127.0.0.1", self.port, reuse_address=True
            )

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()  # a reset, as from a process that died
        self._writers.clear()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        self._writers.add(client_w)
        try:
            await self._flowing.wait()
            store_r, store_w = await asyncio.open_connection(*self._target)
        except OSError:
            client_w.transport.abort()
            self._writers.discard(client_w)
            return
        self._writers.add(store_w)
        try:
            await asyncio.gather(self._pump(client_r, store_w), self._pump(store_r, client_w))
        finally:
            for writer in (client_w, store_w):
                writer.transport.abort()
                self._writers.discard(writer)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(65536)
                await self._flowing.wait()  # read before the freeze: held until it ends
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            writer.transport.abort()  # one side is gone: so is the other
