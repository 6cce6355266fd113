"""The host's live evaluator: one evaluation per distinct subscription for every server
worker on this host, run by ``metronome worker``.

It listens on a Unix socket in the data directory (:func:`~metronome.live.link.socket_path`,
private like the rest of it). Each server worker's hub links to it, passes on the distinct
subscriptions its connections hold, and gets their answers back when they change
(:mod:`metronome.live.link` draws the lines). The queries run here, in the worker process
(which ``metronome serve`` runs at a lower CPU priority), so subscribers cost the
processes that acknowledge ticks only the fan-out; and two workers holding the same
subscription share one evaluation instead of running one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

import orjson

from metronome.config import Settings
from metronome.errors import MetronomeError
from metronome.live.hub import Evaluation, Hub
from metronome.live.link import LINE_LIMIT, answer_line, short_path, socket_path
from metronome.store.base import Store

__all__ = ["serve_evaluations"]

log = logging.getLogger("metronome")

_MAX_BUFFER_BYTES = 64 << 20
"""A server worker that lets more than this wait unread is cut off (it evaluates itself)."""


class _Worker:
    """One linked server worker: its subscriptions here, by its tokens."""

    def __init__(self, hub: Hub, writer: asyncio.StreamWriter) -> None:
        self._hub = hub
        self._writer = writer
        self.held: dict[str, Evaluation] = {}

    def relay(self, token: str, digest: bytes, at_ms: int, kind: str, payload: bytes) -> None:
        if self._writer.is_closing():
            return
        if self._writer.transport.get_write_buffer_size() > _MAX_BUFFER_BYTES:
            log.warning("live_worker_too_slow: closing its link")
            self._writer.close()
            return
        self._writer.write(answer_line(token, digest, at_ms, kind, payload))

    def handle(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        token = message.get("token")
        if not isinstance(token, str) or " " in token or not token:
            return
        if message.get("op") == "sub":
            site_id, body, interval_ms = (
                message.get("site"),
                message.get("body"),
                message.get("interval_ms"),
            )
            if (
                not isinstance(site_id, str)
                or not isinstance(body, dict)
                or not isinstance(interval_ms, int)
                or interval_ms <= 0
            ):
                return
            self.drop(token)
            self.held[token] = self._hub.relay(site_id, body, interval_ms, self, token)
        elif message.get("op") == "unsub":
            self.drop(token)

    def drop(self, token: str) -> None:
        evaluation = self.held.pop(token, None)
        if evaluation is not None:
            self._hub.unrelay(evaluation, self, token)

    def drop_all(self) -> None:
        for token in list(self.held):
            self.drop(token)

    def close(self) -> None:
        """End the link: the server worker evaluates its subscriptions itself meanwhile."""
        self.drop_all()
        self._writer.close()


async def serve_evaluations(settings: Settings, store: Store, stop: asyncio.Event) -> None:
    """Evaluate the server workers' subscriptions until ``stop``. Another evaluator that
    already listens on this data directory keeps the job (this one returns)."""
    path = socket_path(settings.data_dir)
    with short_path(path) as name:
        try:
            _, probe = await asyncio.open_unix_connection(name)
        except OSError:
            pass
        else:
            probe.close()
            log.info("live_evaluator_elsewhere path=%s", path)
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)  # left by an evaluator that died
        hub = Hub(settings, store, linked=False)
        workers: set[_Worker] = set()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            worker = _Worker(hub, writer)
            workers.add(worker)
            try:
                while True:
                    line = await reader.readline()
                    if not line:
                        break
                    try:
                        worker.handle(orjson.loads(line))
                    except (orjson.JSONDecodeError, MetronomeError):
                        continue
            except (OSError, ValueError):
                pass
            finally:
                workers.discard(worker)
                worker.drop_all()
                writer.close()

        server = await asyncio.start_unix_server(serve, name, limit=LINE_LIMIT)
    os.chmod(path, 0o600)
    log.info("live_evaluator_listening path=%s", path)
    try:
        await stop.wait()
    finally:
        server.close()
        for worker in list(workers):
            worker.close()
        await hub.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
