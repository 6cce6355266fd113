"""The host's live evaluator: server workers' hubs hand their distinct subscriptions to it
over the Unix socket in the data directory, get the answers back, and evaluate themselves
whenever it is not there. In one process, on a real embedded store and a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

from metronome.config import Settings
from metronome.live.evaluator import serve_evaluations
from metronome.live.hub import Hub
from metronome.live.link import socket_path
from metronome.store import open_store

QUERY = {"range": "5min", "metrics": ["events"]}


class Page:
    """A subscriber: keeps what it is offered."""

    def __init__(self) -> None:
        self.messages: list[dict[str, object]] = []

    def offer(self, sub_id: str, message: bytes) -> None:
        self.messages.append(orjson.loads(message))


async def _until(check: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _run(tmp_path: Path, body: Callable[[Settings, object], Awaitable[None]]) -> None:
    # a deep data directory: longer than a Unix socket address may be
    data_dir = tmp_path.joinpath(*["a-rather-long-directory-name"] * 4, "data")
    settings = Settings.from_env(
        {"METRONOME_DATA_DIR": str(data_dir), "METRONOME_LIVE_MIN_FREQUENCY_MS": "100"}
    )

    async def main() -> None:
        async with open_store(settings) as store:
            await store.ensure_schema()
            await body(settings, store)

    asyncio.run(main())


def test_two_workers_share_the_evaluators_one_evaluation_and_get_every_answer(
    tmp_path: Path,
) -> None:
    async def body(settings: Settings, store: object) -> None:
        stop = asyncio.Event()
        evaluator = asyncio.create_task(serve_evaluations(settings, store, stop))  # type: ignore[arg-type]
        await _until(lambda: socket_path(settings.data_dir).exists(), "the evaluator")
        workers = [Hub(settings, store), Hub(settings, store)]  # type: ignore[arg-type]
        pages = [Page(), Page()]
        held = [
            hub.subscribe("default", QUERY, 100, page, "now")
            for hub, page in zip(workers, pages, strict=True)
        ]
        await _until(lambda: all(e.token is not None for e in held), "the hand-over")
        await _until(lambda: all(p.messages for p in pages), "the first answers")
        assert all(e.task is None for e in held)  # the workers evaluate nothing themselves
        assert all(e.runs == 0 for e in held)
        answer = pages[0].messages[-1]
        assert answer["type"] == "result" and answer["id"] == "now"
        assert answer["data"]["results"] == [{"dimensions": [], "metrics": [0]}]  # type: ignore[index]
        for hub, evaluation, page in zip(workers, held, pages, strict=True):
            hub.unsubscribe(evaluation, page, "now")
        stop.set()
        await evaluator
        for hub in workers:
            await hub.close()
        assert not socket_path(settings.data_dir).exists()

    _run(tmp_path, body)


def test_a_worker_evaluates_itself_without_the_evaluator_and_hands_over_when_it_comes(
    tmp_path: Path,
) -> None:
    async def body(settings: Settings, store: object) -> None:
        hub = Hub(settings, store)  # type: ignore[arg-type]
        page = Page()
        evaluation = hub.subscribe("default", QUERY, 100, page, "now")
        await _until(lambda: evaluation.runs >= 2, "evaluations in the worker")
        assert evaluation.token is None and page.messages
        stop = asyncio.Event()
        evaluator = asyncio.create_task(serve_evaluations(settings, store, stop))  # type: ignore[arg-type]
        await _until(lambda: evaluation.token is not None, "the hand-over", timeout_s=30)
        assert evaluation.task is None
        stop.set()  # the evaluator stops: the worker takes its subscription back
        await evaluator
        await _until(lambda: evaluation.task is not None, "the fallback")
        runs = evaluation.runs
        await _until(lambda: evaluation.runs > runs, "evaluations in the worker again")
        hub.unsubscribe(evaluation, page, "now")
        await hub.close()

    _run(tmp_path, body)
