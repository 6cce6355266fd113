"""``metronome import`` assigns visits in its parsing processes, handing the visits each
block changed to the process that reads the next block: the visits it stores are exactly
those one visit book gives reading the same blocks in order (what the importing process
did itself before, decoding and encoding every event again). Run with tiny blocks, so a
short log crosses dozens of handovers between the two parsing processes, on old days
(whose visitor salts are not kept on disk) across midnight."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from metronome.config import Settings
from metronome.events.document import Document
from metronome.logs.ingest import LineConverter
from metronome.logs.parse import Reject
from metronome.pipeline import import_process
from metronome.pipeline.log_input import import_files
from metronome.pipeline.visits import OpenVisit, VisitBook, VisitState

BLOCK = 7
AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
)


def _write_log(path: Path, lines: int, seed: int, very_late: float = 0.0) -> None:
    """Visitors interleaved over a few hours: pauses longer than a visit's gap, lines a
    few minutes older than the one before (stragglers across blocks), a crawler, 404s,
    a line that is not a request, and referrers from outside and from the site; with
    ``very_late``, that share of lines 31 to 45 minutes older than the newest."""
    rng = random.Random(seed)
    at = datetime(2026, 5, 7, 22, 50, tzinfo=UTC)
    with open(path, "w") as f:
        for i in range(lines):
            at += timedelta(seconds=rng.choice((5, 20, 60, 240)))
            if rng.random() < 0.03:
                at += timedelta(minutes=40)  # everyone's visit ends
            when = at - timedelta(minutes=rng.choice((0, 0, 0, 0, 3, 9)))
            if rng.random() < very_late:
                when = at - timedelta(minutes=rng.randrange(31, 46))
            if i % 97 == 96:
                f.write(f"not a request {i}\n")
                continue
            client = f"10.0.{rng.randrange(3)}.{rng.randrange(6)}"
            status = 404 if rng.random() < 0.1 else 200
            referrer = rng.choice(("-", "https://search.example/q", "https://shop.example/"))
            f.write(
                f"{client} - - [{when:%d/%b/%Y:%H:%M:%S} +0000]"
                f' "GET /datasets/d{rng.randrange(12)} HTTP/1.1" {status} 512'
                f' "{referrer}" "{rng.choice(AGENTS)}"\n'
            )


def _stored_and_expected(
    settings: Settings, path: Path, block: int = BLOCK
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """What the import stored, beside what one book reading the file's blocks in order
    gives: (the events' visit fields by event id, the same expected, the summaries by
    visit id, the same expected)."""
    with sqlite3.connect(Path(settings.data_dir) / "metronome.sqlite3") as conn:
        rows = conn.execute("SELECT id, dataset, doc FROM events").fetchall()
    visitors = {i: orjson.loads(doc).get("visitor") for i, ds, doc in rows if ds == "logs"}
    _TWINS.clear()
    visits, summaries = _expected(settings, path, visitors, block=block)
    stored_visits = {i: orjson.loads(doc).get("visit") for i, ds, doc in rows if ds == "logs"}
    stored_summaries = {i: orjson.loads(doc) for i, ds, doc in rows if ds == "visits"}
    return stored_visits, visits, stored_summaries, summaries


def _expected(
    settings: Settings, path: Path, stored_visitors: dict[str, Any], block: int = BLOCK
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Visit fields by event id and summaries by visit id from one book reading the
    file's blocks in order, as the importing process assigned them before (to events
    with the visitor ids the import stored: another process's salts are random)."""
    converter = LineConverter(settings, rejects=_NoRejects(), run_key=bytes(32))
    book = VisitBook(settings.visit_gap_s, VisitState(None, settings.visit_state_max))
    visits: dict[str, Any] = {}
    summaries: dict[str, Any] = {}
    lines = path.read_text().splitlines()
    for start in range(0, len(lines), block):
        documents: list[Document] = []
        for number, text in enumerate(lines[start : start + block], start + 1):
            parsed = converter.parse(text)
            if not isinstance(parsed, Reject):
                document = converter.document(parsed, text, number, 0)
                own = document.source.get("visitor")
                if own is not None:  # one of this run's visitors is one of the import's
                    assert (
                        _TWINS.setdefault(own["id"], stored_visitors[document.id])
                        == (stored_visitors[document.id])
                    )
                    document.source["visitor"] = stored_visitors[document.id]
                documents.append(document)
        assigned = book.assign(documents)
        book.commit(assigned)
        for document in assigned.documents:
            if document.dataset == "visits":
                summaries[document.id] = orjson.loads(orjson.dumps(document.source))
            else:
                visits[document.id] = document.source.get("visit")
    return visits, summaries


def _settings(tmp_path: Path, log_format: str, **extra: str) -> Settings:
    """An import's settings: a data directory of the test's, the dataset pages a view."""
    env = {
        "METRONOME_DATA_DIR": str(tmp_path / "data"),
        "METRONOME_LOG_FORMAT": log_format,
        "METRONOME_URL_RULES": "/datasets/{id} -> view",
    }
    env.update({f"METRONOME_{name.upper()}": value for name, value in extra.items()})
    return Settings.from_env(env)


_TWINS: dict[str, Any] = {}


class _NoRejects:
    def add(self, record: dict[str, Any], reject_id: str | None = None) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize("log_format", ["combined", "auto"])  # two parsing processes, one
def test_imported_visits_are_those_one_book_gives_reading_the_blocks_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_format: str
) -> None:
    log = tmp_path / "access.log"
    _write_log(log, 400, seed=24)
    settings = _settings(tmp_path, log_format)
    monkeypatch.setattr(import_process, "BATCH_DOCS", BLOCK)
    summary = asyncio.run(import_files(settings, [str(log)]))
    assert summary.read == 400 and sum(summary.rejected.values()) == 4
    assert summary.stored == 396

    stored_visits, visits, stored_summaries, summaries = _stored_and_expected(settings, log)
    # one client and user agent on one day is one visitor, whichever process read it
    assert len(set(map(str, _TWINS.values()))) == len(_TWINS) >= 20
    assert stored_visits == visits
    assert stored_summaries == summaries
    # the log crosses visits, visitors and blocks: the comparison is not a trivial one
    assert len(summaries) >= 20
    assert any(v and v["seq"] > 3 for v in visits.values())
    assert sum(v is None for v in visits.values()) > 0  # the crawler's requests


def test_a_visit_summarised_before_a_very_late_line_joins_it_is_stored_as_it_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The import writes a visit's summary once the newest line is a visit gap past it;
    a line older than that which still joins the visit (a request logged over half an
    hour late) sends the summary again, so what is stored is still what one book gives."""
    log = tmp_path / "access.log"
    _write_log(log, 400, seed=25, very_late=0.08)
    settings = _settings(tmp_path, "combined")
    monkeypatch.setattr(import_process, "BATCH_DOCS", BLOCK)
    summary = asyncio.run(import_files(settings, [str(log)]))
    assert summary.stored == 396

    stored_visits, visits, stored_summaries, summaries = _stored_and_expected(settings, log)
    assert stored_visits == visits
    assert stored_summaries == summaries
    # some lines joined visits that began after them (the log is far from time order)
    assert any(v and v["gap_ms"] == 0 and v["seq"] > 1 for v in visits.values())


def _write_crowd(path: Path, lines: int, seed: int, visitors: int) -> int:
    """Many more visitors than the visit book keeps, each coming back a few minutes
    later, well within the visit gap (so whether a visit goes on depends on the book
    still holding it); now and then a line of a visitor seen 90 lines before, logged two
    hours late (older than that visitor's open visit: a visit of its own, which changes
    nothing in the book but how recently it used the visitor's). Returns how many."""
    rng = random.Random(seed)
    at = datetime(2026, 5, 7, 9, 0, tzinfo=UTC)
    seen: list[int] = []
    late = 0
    with open(path, "w") as f:
        for _ in range(lines):
            at += timedelta(seconds=rng.choice((1, 2, 3)))
            who, when = rng.randrange(visitors), at
            if rng.random() < 0.05 and len(seen) > 90:
                who, when = seen[-90], at - timedelta(hours=2)  # nearly the book's oldest
                late += 1
            seen.append(who)
            f.write(
                f"10.1.{who // 250}.{who % 250} - - [{when:%d/%b/%Y:%H:%M:%S} +0000]"
                f' "GET /datasets/d{rng.randrange(12)} HTTP/1.1" 200 512'
                f' "-" "{AGENTS[who % 2]}"\n'
            )
    return late


@pytest.mark.parametrize("log_format", ["combined", "auto"])  # two parsing processes, one
def test_with_more_visitors_than_the_book_keeps_the_visits_are_still_one_books(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_format: str
) -> None:
    """Past ``METRONOME_VISIT_STATE_MAX`` open visitors, the least recently used leave the
    book and come back as a new visit (the documented bound): which ones leave must not
    depend on which parsing process read which block, so the import still stores exactly
    what one book reading every block in order gives."""
    log = tmp_path / "access.log"
    late = _write_crowd(log, 3000, seed=7, visitors=400)
    settings = _settings(tmp_path, log_format, visit_state_max="100")
    monkeypatch.setattr(import_process, "BATCH_DOCS", 50)
    summary = asyncio.run(import_files(settings, [str(log)]))
    assert summary.stored == 3000

    stored_visits, visits, stored_summaries, summaries = _stored_and_expected(
        settings, log, block=50
    )
    continued = sum(v["seq"] > 1 for v in visits.values())
    differing = sum(stored_visits[i] != v for i, v in visits.items())
    assert (len(stored_summaries), differing) == (len(summaries), 0)
    assert stored_summaries == summaries
    # the book overflowed (most returns began a new visit), yet some visits went on
    assert len(_TWINS) == 400 and len(summaries) > 2 * 400 and continued > 100 and late > 50


def test_the_second_parsing_process_keeps_no_book_and_assigns_what_the_book_would(
    tmp_path: Path,
) -> None:
    """The import keeps one visit book, in the first parsing process (a copy in each was
    most of their memory: issue 24). The second one keeps no visit between blocks: it
    assigns each block from the open visits the first looks up for the block's visitors,
    hands back what changed, and its batches are those of the book itself. It also
    summarises the visits that the first finds ended by time (the first is the busier),
    a block later, and the summary stored last of each visit is still the book's."""
    log = tmp_path / "access.log"
    late = _write_crowd(log, 1500, seed=11, visitors=300)
    settings = _settings(tmp_path, "combined", visit_state_max="100")
    lines = [(n, t) for n, t in enumerate(log.read_text().splitlines(), 1)]
    blocks = [lines[i : i + 25] for i in range(0, len(lines), 25)]

    def run(split: bool) -> tuple[list[Any], dict[str, Any]]:
        sent: list[tuple[Any, ...]] = []
        first = import_process._BlockParser(settings, sent.append, bytes(32))
        second = import_process._BlockParser(settings, sent.append, bytes(32), book=False)
        first._received_ms = second._received_ms = 1_778_000_000_000  # event.ingested
        if split:  # the visits that end by time go to the second process, as in an import
            first.pass_to_other()
        for number, block in enumerate(blocks):
            if split and number % 2:
                documents = second.documents(str(log), block)
                keys = VisitBook.keys(documents)
                found = first.lookup([k for k in dict.fromkeys(keys) if k is not None])
                passed = first.passed()  # with the lookup's answer
                passed_on[0] += len(passed)
                handoff, assigned, ended = second.assign_forwarded(documents, keys, found)
                first.apply(handoff)
                ended[:0] = map(OpenVisit.from_json, passed)
                second.send_assigned(assigned, ended, len(block))
            else:
                first.send_assigned(*first.assign(first.documents(str(log), block)), len(block))
        assert second._waiting == {} and second._book is None
        first.done()
        events = [row for message in sent if message[0] == "batch" for row in message[1]]
        summaries = {row[0]: row for message in sent if message[0] == "batch" for row in message[2]}
        return events, summaries  # the summary stored last of each visit

    passed_on = [0]
    one_book, split = run(False), run(True)
    assert split[0] == one_book[0] and len(one_book[0]) == 1500
    assert split[1] == one_book[1] and len(one_book[1]) > 300
    assert passed_on[0] > 100  # summarised by the second process, a block later
    assert late > 10


def test_a_visit_ended_by_time_then_joined_by_a_late_line_is_stored_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first parsing process finds a visit ended by time (the newest line is a visit
    gap past it) and passes it to the second, which summarises it with its next block;
    when that very block adds a late line to the visit and ends it (the visitor comes back
    hours later), the summary stored is the later one, with the late line."""
    log = tmp_path / "access.log"
    agent = AGENTS[0]

    def line(who: str, at: str, page: str) -> str:
        return (
            f'{who} - - [07/May/2026:{at} +0000] "GET /datasets/{page} HTTP/1.1" 200 512'
            f' "-" "{agent}"\n'
        )

    log.write_text(
        line("10.1.0.1", "10:00:00", "a")  # block 0 (first process): the visit begins
        + line("10.1.0.2", "10:40:00", "b")  # the newest: the visit has ended by time
        + line("10.1.0.1", "10:05:00", "c")  # block 1 (second process): late, joins it
        + line("10.1.0.1", "12:00:00", "d")  # back hours later: a new visit, the first ends
    )
    settings = _settings(tmp_path, "combined")
    monkeypatch.setattr(import_process, "BATCH_DOCS", 2)
    summary = asyncio.run(import_files(settings, [str(log)]))
    assert summary.stored == 4

    stored_visits, visits, stored_summaries, summaries = _stored_and_expected(
        settings, log, block=2
    )
    assert stored_visits == visits
    assert stored_summaries == summaries
    first = next(s["visit"] for s in stored_summaries.values() if s["visit"]["entry"] == "a")
    assert (first["events"], first["items"]) == (2, ["a", "c"])
