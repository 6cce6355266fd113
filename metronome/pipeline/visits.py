"""Visits: which of a visitor's events belong together, assigned as they are shipped.

A visit is one visitor's run of events on one site with no gap longer than
``METRONOME_VISIT_GAP`` (30 minutes). It also ends when the visitor id rotates (ids are
daily and per site: :mod:`metronome.events.visitor`), so a new day or another site is a new
visit by construction. Crawlers and referrer spam get no visit.

How it stays exact and cheap:

- The shipper sorts each batch by time (then the order the events were received in: a
  batch of ticks sent without times shares one millisecond) before assigning, so events
  that arrive out of order within a batch are placed exactly.
- Per visitor it keeps the open visit (its id, first and last event times, the number of
  events so far, the pages in time order) in memory (the visitors whose visit changed
  most recently, ``METRONOME_VISIT_STATE_MAX`` of them), backed by SQLite, so a restart
  continues the open visits. With the embedded store the state lives in the store's own
  database (tables ``open_visits`` and ``visits_marker``) and is committed in the very
  transaction that stores the batch, with the spool position it reaches: events, visits
  and position are durable together or not at all (one ``fsync`` per batch). With
  Elasticsearch it is a small SQLite file in the spool directory
  (``spool/visits.sqlite3``), committed after the batch is stored, with the position, in
  one transaction; a crash before that re-sends the batch, which is assigned again from
  the same state to the same answer (ids are deterministic: a hash of the site and the
  visit's first event id), so replays store nothing twice.
- Each event gets ``visit.id``, ``visit.seq`` (its position), ``visit.gap_ms`` (time since
  the visitor's previous event) and ``visit.prev`` (the page before). One summary document
  per visit (dataset ``visits``, its id the visit id) is written again, replacing the last,
  after each batch that adds to the visit.
- An event the visit holds already (its id among the visit's latest ``MAX_TIMES``: a tick
  another Metronome forwarded again after a crash, a message RabbitMQ delivered again)
  changes nothing: the store keeps its first copy, and the summary counts it once.
  A resend arriving after its visitor began another visit would count as a visit of its
  own (the ids of ended visits are not kept); senders resend within minutes.
- An event older than events of its visit that were already shipped (a straggler from
  another spool segment) still joins the visit: the summary's pages, entry, exit and
  duration stay in time order, exactly; its own ``visit.seq`` is the next number.
  An event older than the open visit's start by more than the gap starts a visit of its own.
- Several hosts: each host ships its own spool, so visits are exact when a visitor's
  requests reach one host -- partition visitors at the load balancer by client address
  (NGINX ``hash $remote_addr consistent``), which visitor ids are derived from anyway.
- ``metronome import`` assigns visits the same way across the whole import, with state in
  memory only (an import is one time-ordered pass; importing again gives the same ids).
"""

from __future__ import annotations

import bisect
import hashlib
import os
import sqlite3
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import orjson

from metronome.events import fields as F
from metronome.events.document import Document, FrozenDict, format_timestamp
from metronome.store.sqlite import connect, setup_lock

__all__ = ["Assignment", "OpenVisit", "VisitBook", "VisitState", "page_of"]

STATE_FILE = "visits.sqlite3"
MAX_ITEMS = 500  # pages kept in order in a summary (the counts go on past it)
MAX_TIMES = 2000  # event times kept per open visit (to measure a straggler's gap)
_VISITED = ("ticks", "logs")
_PRUNE_AFTER_MS = 2 * 86_400_000  # a visitor id lives one day; keep state two past the gap


_PARTS: dict[str, list[str]] = {}  # a field name's parts, split once (a few names)


def _get(source: dict[str, Any], name: str) -> Any:
    value: Any = source
    parts = _PARTS.get(name)
    if parts is None:
        parts = _PARTS[name] = name.split(".")
    for part in parts:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _get2(source: dict[str, Any], outer: str, inner: str) -> Any:
    """``_get(source, "outer.inner")``, without splitting the name (once per event)."""
    value = source.get(outer)
    return value.get(inner) if isinstance(value, dict) else None


_EVENT, _ACTION = F.EVENT_ACTION.split(".")
_ITEM, _ITEM_ID = F.ITEM_ID.split(".")
_URL, _PATH = F.URL_PATH.split(".")
_URL_AGAIN, _DOMAIN = F.URL_DOMAIN.split(".")
_SITE, _SITE_ID = F.SITE_ID.split(".")
_VISITOR, _VISITOR_ID = F.VISITOR_ID.split(".")
_REFERRER, _SPAM = F.REFERRER_SPAM.split(".")
_REFERRER_AGAIN, _REFERRER_DOMAIN = F.REFERRER_DOMAIN.split(".")
_HTTP, _RESPONSE, _STATUS = F.HTTP_RESPONSE_STATUS_CODE.split(".")
assert _URL == _URL_AGAIN and _REFERRER == _REFERRER_AGAIN and "." not in F.BOT


def page_of(document: Document) -> str | None:
    """The page a document is a view of (its item id, or its path), or None when it is no
    page view: view ticks, and access-log requests without another event that succeeded."""
    # _get2 written out (this runs for every event of every batch)
    source = document.source
    event = source.get(_EVENT)
    action = event.get(_ACTION) if isinstance(event, dict) else None
    if action is None:
        if document.dataset != "logs":
            return None
    elif action != "view":
        return None
    http = source.get(_HTTP)
    response = http.get(_RESPONSE) if isinstance(http, dict) else None
    status = response.get(_STATUS) if isinstance(response, dict) else None
    if isinstance(status, int) and status >= 400:
        return None
    item = source.get(_ITEM)
    page = item.get(_ITEM_ID) if isinstance(item, dict) else None
    if not page:
        url = source.get(_URL)
        page = url.get(_PATH) if isinstance(url, dict) else None
    return str(page) if page else None


def _visited(source: dict[str, Any]) -> bool:
    """An event that belongs to a visit: a visitor's, neither a crawler's nor spam."""
    visitor = source.get(_VISITOR)  # _get2 written out (every event of every batch)
    if not isinstance(visitor, dict) or not visitor.get(_VISITOR_ID) or source.get(F.BOT):
        return False
    referrer = source.get(_REFERRER)
    return not (isinstance(referrer, dict) and referrer.get(_SPAM))


def _site_of(source: dict[str, Any]) -> str:
    site = source.get(_SITE)  # _get2 written out (every event of every batch)
    return str((site.get(_SITE_ID) if isinstance(site, dict) else None) or F.DEFAULT_SITE)


def _visit_id(site: str, first_event_id: str) -> str:
    """Event ids are unique, so the first one names the visit; not the visitor id, which
    differs between two imports of an old day (its salt is gone: events/visitor.py)."""
    return hashlib.sha256(f"{site}\x1f{first_event_id}".encode()).hexdigest()[:32]


@dataclass(slots=True)
class OpenVisit:
    """A visitor's latest visit as far as the shipper knows it."""

    visit_id: str
    index_ms: int  # the summary's @timestamp (and daily index): the start when first seen
    start_ms: int
    last_ms: int
    seq: int
    events: int
    pageviews: int
    pages: list[tuple[int, str]]  # (time, page) in time order, at most MAX_ITEMS
    times: list[int]  # event times in time order, the latest MAX_TIMES
    source: str  # visit.source
    base: dict[str, Any] = field(default_factory=dict)  # the entry event's fields
    ids: list[str] = field(default_factory=list)  # event ids as assigned, the latest MAX_TIMES

    def to_json(self) -> bytes:
        """The visit packed (what the state keeps): copied to a bytes object of its own
        length, as orjson's keeps the whole (4 KB) buffer it wrote into."""
        fields = [  # the order of __slots__ (the fields'): what from_json reads back
            self.visit_id,
            self.index_ms,
            self.start_ms,
            self.last_ms,
            self.seq,
            self.events,
            self.pageviews,
            self.pages,
            self.times,
            self.source,
            self.base,
            self.ids,
        ]
        return bytes(memoryview(orjson.dumps(fields)))

    def copy(self) -> OpenVisit:
        """A copy to change (what :meth:`from_json` of :meth:`to_json` gives, sooner: the
        lists are copied; the entry event's fields are never changed, only replaced)."""
        return replace(self, pages=list(self.pages), times=list(self.times), ids=list(self.ids))

    @classmethod
    def from_json(cls, raw: bytes | str) -> OpenVisit:
        values = orjson.loads(raw)
        values[7] = list(map(tuple, values[7]))
        return cls(*values)

    def summary(self) -> Document:
        """The visit's summary document."""
        items = [page for _, page in self.pages]
        exits = items[-1] if items else None
        duration = self.last_ms - self.start_ms
        visit: dict[str, Any] = {
            "id": self.visit_id,
            "start": self.start_ms,
            "end": self.last_ms,
            "events": self.events,
            "pageviews": self.pageviews,
            "duration_ms": duration,
            "items": items,
            "offsets_ms": [at - self.start_ms for at, _ in self.pages],
            "source": self.source,
            "bounce": 1 if self.pageviews <= 1 else 0,
        }
        if items:
            visit["entry"] = items[0]
            visit["exit"] = exits
        if self.pageviews > 1:
            visit["page_time_ms"] = duration // (self.pageviews - 1)
        source = {
            **self.base,
            F.TIMESTAMP: format_timestamp(self.index_ms),
            F.VERSION: "1",
            "event": {"id": self.visit_id, "dataset": "metronome." + F.VISITS_DATASET},
            "visit": visit,
        }
        return Document(self.visit_id, self.index_ms, F.VISITS_DATASET, source)


def _base(source: dict[str, Any]) -> dict[str, Any]:
    """What a summary keeps of its entry event: site, visitor, browser, device, country.

    The site, browser and country parts are the same for many visits: each is one shared
    :class:`FrozenDict` per distinct value (an import keeps up to
    ``METRONOME_VISIT_STATE_MAX`` open visits in memory)."""
    base: dict[str, Any] = {}
    site = source.get("site")
    if isinstance(site, dict):
        base["site"] = _shared_of(site, _shared)
    visitor = source.get("visitor")
    if isinstance(visitor, dict):
        base["visitor"] = dict(visitor)
    agent = source.get("user_agent")
    if isinstance(agent, dict):
        base["user_agent"] = _shared_of(agent, _agent_base)
    country = _get(source, F.CLIENT_GEO_COUNTRY_ISO_CODE)
    if country:
        found = _countries.get(country) if isinstance(country, str) else None
        if found is None:
            found = _shared({"geo": {"country_iso_code": country}})
            if isinstance(country, str) and len(country) <= 8:
                _keep(_countries, country, found)
        base["client"] = found
    return base


def _agent_base(agent: dict[str, Any]) -> FrozenDict:
    return _shared({k: v for k, v in agent.items() if k != "original"})


_SHARED_MAX = 4096
_V = TypeVar("_V")
_shared_parts: dict[bytes, FrozenDict] = {}
# A part an event shares with others (a FrozenDict: the parsed user agent, the site)
# gives the same answer every time: kept by the part's identity, with the part itself (so
# its id is not another object's while it is kept), without encoding it to JSON again.
_by_part: dict[int, tuple[FrozenDict, FrozenDict]] = {}
_countries: dict[str, FrozenDict] = {}


def _shared_of(part: dict[str, Any], make: Any) -> FrozenDict:
    """``make(part)``, once per shared (frozen) part."""
    if part.__class__ is not FrozenDict:
        result: FrozenDict = make(part)
        return result
    found = _by_part.get(id(part))
    if found is not None and found[0] is part:
        return found[1]
    result = make(part)
    _keep(_by_part, id(part), (part, result))
    return result


def _shared(part: dict[str, Any]) -> FrozenDict:
    """One frozen copy of ``part`` (its dicts frozen too) per distinct JSON of it."""
    key = orjson.dumps(part)
    found = _shared_parts.get(key)
    if found is None:
        found = _keep(_shared_parts, key, _frozen(part))
    return found


def _keep(cache: dict[Any, _V], key: Any, value: _V) -> _V:
    """``value``, kept under ``key`` in one of the caches above (emptied when it holds
    :data:`_SHARED_MAX` entries: what is shared again is kept again)."""
    if len(cache) >= _SHARED_MAX:
        cache.clear()
    cache[key] = value
    return value


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return FrozenDict({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_frozen(v) for v in value]
    return value


def _source_of(source: dict[str, Any]) -> str:
    """The entry's external referrer host, or ``direct``."""
    referrer = _get2(source, _REFERRER, _REFERRER_DOMAIN)
    if not referrer:
        return F.VISIT_DIRECT
    own = _get2(source, _URL, _DOMAIN)
    if own and str(own).lower().removeprefix("www.") == str(referrer).lower():
        return F.VISIT_DIRECT  # from a page of the same site: no external source
    return str(referrer)


@dataclass(frozen=True, slots=True)
class Assignment:
    """A batch with its visits: the documents to store (events with their visit fields,
    then one summary per visit touched) and the visits' new state, to commit once stored."""

    documents: list[Document]
    changed: dict[str, OpenVisit]
    events: int  # how many of ``documents`` are the batch's own
    touched: tuple[OpenVisit, ...] = ()  # the visits the batch touched, as they now are


_STORE_MARKER = "visits_marker"  # in the store's database: a name of its own


def _create_tables(conn: sqlite3.Connection, marker_table: str) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS open_visits (key TEXT PRIMARY KEY,"
        " last_ms INTEGER NOT NULL, state BLOB NOT NULL) WITHOUT ROWID"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS open_visits_last ON open_visits (last_ms)")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {marker_table} (segment TEXT, position INTEGER)")


def _move_in(legacy: Path, conn: sqlite3.Connection) -> None:
    """Copy a ``visits.sqlite3`` file's open visits and marker into the store's tables
    (one durable transaction), then remove the file for good (its WAL merged into it
    first, and the directory synced), so an older state is never moved in over a newer."""
    old = sqlite3.connect(legacy, isolation_level=None)
    try:
        old.execute("PRAGMA journal_mode = DELETE")  # the WAL into the file, and gone
        names = {row[0] for row in old.execute("SELECT name FROM sqlite_master")}
        rows = (
            old.execute("SELECT key, last_ms, state FROM open_visits").fetchall()
            if "open_visits" in names
            else []
        )
        marker = None
        if "marker" in names:
            marker = old.execute("SELECT segment, position FROM marker").fetchone()
    finally:
        old.close()
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            "INSERT OR REPLACE INTO open_visits (key, last_ms, state) VALUES (?, ?, ?)", rows
        )
        if marker is not None:
            conn.execute(f"DELETE FROM {_STORE_MARKER}")
            conn.execute(f"INSERT INTO {_STORE_MARKER} VALUES (?, ?)", marker)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{legacy}{suffix}").unlink(missing_ok=True)
    fd = os.open(legacy.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class VisitState:
    """Open visits by visitor key: in memory, the most recently changed ones (the least
    recently changed leave first), over an optional SQLite database.

    Recency is that of changes (:meth:`commit`), not of reads: ``metronome import``'s
    first parsing process keeps the book and also looks up (:meth:`packed`) the visitors
    of the blocks the second one assigns, whose changes come back in block order, so an
    order of reads (those lookups, or a line that only looked its visitor up: a straggler
    older than the open visit, an event sent again) would make it keep other visitors
    once there are more than ``max_entries`` than one book reading every block would.

    The database is a file of its own (``VisitState(path, ...)``: the spool's
    ``visits.sqlite3`` when the store is Elasticsearch, which commits the state in its own
    transaction after each stored batch), or the embedded store's database
    (:meth:`in_store`), whose tables the shipper writes in the store's own transaction,
    with the batch's events (:meth:`write_rows`): one commit and one ``fsync`` per batch
    rather than two, and no moment when the events are stored and their visits are not.
    """

    def __init__(self, path: Path | None, max_entries: int) -> None:
        # packed (OpenVisit.to_json): a third of the objects' memory (an import keeps up
        # to max_entries open visits in memory)
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._max = max_entries
        self._conn: sqlite3.Connection | None = None
        self._marker_table = "marker"
        # the visits of the batch committed last, as objects too: the next batch mostly
        # continues them, and a copy of one is cheaper than decoding it again (a long
        # visit keeps MAX_TIMES ids and times: 100 KB of JSON)
        self._latest: dict[str, tuple[bytes, OpenVisit]] = {}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA busy_timeout = 30000")
            _create_tables(conn, self._marker_table)
            self._conn = conn

    @classmethod
    def in_store(cls, database: Path, max_entries: int, *, legacy: Path | None) -> VisitState:
        """The state kept in the embedded store's database file (tables ``open_visits``
        and ``visits_marker``), for the shipper to write with each batch's events.

        ``legacy``: the ``visits.sqlite3`` of a Metronome before this one, moved in once
        (in one durable transaction, then removed; a crash before the removal moves the
        same rows again, as nothing is shipped before the move)."""
        state = cls(None, max_entries)
        state._marker_table = _STORE_MARKER
        conn = connect(database)  # reads, the move, and the tables; batches use the store's
        with setup_lock(database):
            _create_tables(conn, _STORE_MARKER)
        if legacy is not None and legacy.exists():
            _move_in(legacy, conn)
        state._conn = conn
        return state

    def get(self, key: str) -> OpenVisit | None:
        """A copy of the visitor's open visit (changes count once committed)."""
        found = self.packed(key)
        if found is None:
            return None
        latest = self._latest.get(key)
        if latest is not None and latest[0] is found:  # still what the state holds
            return latest[1].copy()
        return OpenVisit.from_json(found)

    def packed(self, key: str) -> bytes | None:
        """The visitor's open visit as :meth:`OpenVisit.to_json` packs it (its place
        among the most recent is unchanged: see the class)."""
        found = self._cache.get(key)
        if found is not None:
            return found
        if self._conn is None:
            return None
        row = self._conn.execute("SELECT state FROM open_visits WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        state = row[0]
        packed = state.encode() if isinstance(state, str) else bytes(state)
        self._remember(key, packed)
        return packed

    def _remember(self, key: str, packed: bytes) -> None:
        self._cache[key] = packed
        self._cache.move_to_end(key)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)

    def marker(self) -> tuple[str, int] | None:
        """The spool segment and position the committed state reaches."""
        if self._conn is None:
            return None
        row = self._conn.execute(f"SELECT segment, position FROM {self._marker_table}").fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def commit(self, changed: dict[str, OpenVisit], marker: tuple[str, int] | None) -> None:
        """Remember ``changed`` and commit it (with ``marker``) in a transaction of its own."""
        packed = self.pack(changed)
        self.remember(changed, packed)
        if self._conn is None:
            return
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            self.write_rows(conn, changed, packed, marker)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def pack(changed: dict[str, OpenVisit]) -> dict[str, bytes]:
        """``changed`` as :meth:`write_rows` and :meth:`commit_packed` take it."""
        return {key: visit.to_json() for key, visit in changed.items()}

    def write_rows(
        self,
        conn: sqlite3.Connection,
        changed: dict[str, OpenVisit],
        packed: dict[str, bytes],
        marker: tuple[str, int] | None,
    ) -> None:
        """Write the state's rows in the transaction open on ``conn`` (this state's own, or,
        :meth:`in_store`, the store's, which commits them with the batch's events); then,
        once committed, :meth:`commit_packed` remembers them."""
        conn.executemany(
            "INSERT OR REPLACE INTO open_visits (key, last_ms, state) VALUES (?, ?, ?)",
            [(k, v.last_ms, packed[k]) for k, v in changed.items()],
        )
        if marker is not None:
            conn.execute(f"DELETE FROM {self._marker_table}")
            conn.execute(f"INSERT INTO {self._marker_table} VALUES (?, ?)", marker)
        newest = max((v.last_ms for v in changed.values()), default=None)
        if newest is not None:  # visitor ids rotate daily: older visits never continue
            conn.execute("DELETE FROM open_visits WHERE last_ms < ?", (newest - _PRUNE_AFTER_MS,))

    def remember(self, changed: dict[str, OpenVisit], packed: dict[str, bytes]) -> None:
        """Remember a committed batch's visits (``packed``: :meth:`pack` of them); the
        objects are the state's from now on: nothing may change them."""
        self.commit_packed(packed)
        self._latest = {key: (packed[key], visit) for key, visit in changed.items()}

    def commit_packed(self, changed: dict[str, bytes]) -> None:
        """Remember visits packed by :meth:`OpenVisit.to_json` (in memory: the file, if
        any, is :meth:`commit`'s)."""
        for key, packed in changed.items():
            self._remember(key, packed)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class VisitBook:
    """Assigns the visits of batches in order (the shipper's, or an import's)."""

    def __init__(self, gap_s: int, state: VisitState) -> None:
        self._gap_ms = gap_s * 1000
        self.state = state

    @staticmethod
    def keys(documents: list[Document]) -> list[str | None]:
        """Each document's visitor key (its site and visitor id), or None for an event that
        belongs to no visit: the state :meth:`assign` reads is that of these keys."""
        keys: list[str | None] = []
        for doc in documents:
            source = doc.source
            if doc.dataset not in _VISITED or not _visited(source):
                keys.append(None)
                continue
            # _visited: both there
            keys.append(f"{_site_of(source)}\x1f{source[_VISITOR][_VISITOR_ID]}")
        return keys

    def assign(
        self,
        documents: list[Document],
        *,
        summaries: bool = True,
        keys: list[str | None] | None = None,
    ) -> Assignment:
        """``documents`` with their visit fields, then the summaries of the visits they
        touched (not with ``summaries=False``: ``metronome import`` writes a visit's
        summary once, from ``touched``); nothing is remembered until :meth:`commit`.
        ``keys``: :meth:`keys` of ``documents``, if known already."""
        gap = self._gap_ms
        changed: dict[str, OpenVisit] = {}
        touched: dict[str, OpenVisit] = {}  # by visit id: a batch may end one and begin another
        out = list(documents)
        seen: dict[str, set[str]] = {}  # by visit id: its ids (a set once per batch)
        if keys is None:
            keys = self.keys(documents)
        eligible = [(i, key) for i, key in enumerate(keys) if key is not None]
        # ties: as received (a stable sort of indices in order keeps them so)
        eligible.sort(key=lambda pair: documents[pair[0]].timestamp_ms)
        for i, key in eligible:
            doc = documents[i]
            site = _site_of(doc.source)
            at = doc.timestamp_ms
            page = page_of(doc)
            current = changed[key] if key in changed else self.state.get(key)
            if current is not None:
                known = seen.get(current.visit_id)
                if known is None:
                    known = seen[current.visit_id] = set(current.ids)
                if doc.id in known:
                    continue  # sent again: stored already (first copy kept), counted once
                known.add(doc.id)
            if current is not None and at < current.start_ms - gap:
                # a straggler of a visit that ended before the open one began
                alone = self._new(doc, site, page)
                touched[alone.visit_id] = alone
                out[i] = self._stamp(doc, alone.visit_id, 1, 0, None)
                continue
            if current is None or at - current.last_ms > gap:
                current = self._new(doc, site, page)
                changed[key] = touched[current.visit_id] = current
                out[i] = self._stamp(doc, current.visit_id, 1, 0, None)
                continue
            changed[key] = touched[current.visit_id] = current
            current.seq += 1
            current.events += 1
            current.ids.append(doc.id)
            del current.ids[:-MAX_TIMES]
            where = bisect.bisect_right(current.times, at)
            before = current.times[where - 1] if where else None
            gap_ms = 0 if before is None else at - before
            current.times.insert(where, at)
            del current.times[:-MAX_TIMES]
            place = bisect.bisect_right(current.pages, (at, "\U0010ffff"))
            prev = current.pages[place - 1][1] if place else None
            if page is not None:
                current.pageviews += 1
                if len(current.pages) < MAX_ITEMS:
                    current.pages.insert(place, (at, page))
            current.start_ms = min(current.start_ms, at)
            current.last_ms = max(current.last_ms, at)
            out[i] = self._stamp(doc, current.visit_id, current.seq, gap_ms, prev)
        visits = tuple(touched.values())
        if summaries:
            out += [v.summary() for v in visits]
        return Assignment(out, changed, len(documents), visits)

    def commit(self, assignment: Assignment, marker: tuple[str, int] | None = None) -> None:
        """Remember the visits of a stored batch (and how far in the spool it reached)."""
        self.state.commit(assignment.changed, marker)

    @staticmethod
    def _new(doc: Document, site: str, page: str | None) -> OpenVisit:
        at = doc.timestamp_ms
        return OpenVisit(
            visit_id=_visit_id(site, doc.id),
            index_ms=at,
            start_ms=at,
            last_ms=at,
            seq=1,
            events=1,
            pageviews=0 if page is None else 1,
            pages=[] if page is None else [(at, page)],
            times=[at],
            source=_source_of(doc.source),
            base=_base(doc.source),
            ids=[doc.id],
        )

    @staticmethod
    def _stamp(doc: Document, visit_id: str, seq: int, gap_ms: int, prev: str | None) -> Document:
        visit: dict[str, Any] = {"id": visit_id, "seq": seq, "gap_ms": gap_ms}
        if prev is not None:
            visit["prev"] = prev
        return Document(doc.id, doc.timestamp_ms, doc.dataset, {**doc.source, "visit": visit})
