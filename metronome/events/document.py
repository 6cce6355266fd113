"""A stored document: its id, its time, which dataset it belongs to, and its source."""

from __future__ import annotations

import hashlib
import random
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any, NoReturn

__all__ = [
    "FORWARDED_HEADER",
    "SENDER_ID",
    "Document",
    "FrozenDict",
    "format_timestamp",
    "forwarded_event_id",
    "freeze",
    "new_event_id",
    "parse_iso",
    "parse_iso_ms",
    "with_event_id",
]


@dataclass(frozen=True, slots=True)
class Document:
    """One event ready for a store.

    ``id`` is assigned at ingestion and becomes the Elasticsearch ``_id`` (and the embedded
    store's primary key), so writing the same document twice stores it once.
    """

    id: str
    timestamp_ms: int
    dataset: str  # "ticks"; later "logs", "metrics"
    source: dict[str, Any]


class FrozenDict(dict[str, Any]):
    """A JSON object that refuses changes: a part many documents share.

    Enrichment answers the same parts again and again (a parsed user agent, a request
    target with its URL rule, a client's address and country, a site), so it caches them
    and documents hold the cached object. Shared, it must never change: one document's
    edit would change every other document holding it. Code that needs a different part
    builds a new dict (``{**part, "spam": True}``); ``part.copy()`` is a plain dict. It
    compares, and serialises to JSON, as the dict it is.
    """

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(
            "this part of a document is shared with other documents and cannot change;"
            " build a new dict instead ({**part, ...})"
        )

    def __setitem__(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse()

    def __delitem__(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse()

    def __ior__(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[misc]
        self._refuse()

    def clear(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse()

    def pop(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse()

    def popitem(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse()

    def setdefault(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse()

    def update(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse()

    def __reduce__(self) -> tuple[type[FrozenDict], tuple[dict[str, Any]]]:
        return FrozenDict, (dict(self),)


def freeze(part: dict[str, Any]) -> FrozenDict:
    """``part`` as a :class:`FrozenDict`, the dicts inside it too."""
    return FrozenDict({k: freeze(v) if isinstance(v, dict) else v for k, v in part.items()})


def new_event_id(now_ms: int | None = None) -> str:
    """A 32-hex-digit id: 48 bits of milliseconds then 80 random bits (sorts by time).

    The random bits only need to be unique, not secret: Python's generator is seeded from
    the OS and reseeded in every forked worker process.
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    # one 128-bit number written as 16 bytes in hex: the same text as formatting the two
    # parts with {:012x}{:020x}
    return (((ms & 0xFFFFFFFFFFFF) << 80) | _random_bits(80)).to_bytes(16, "big").hex()


_random_bits = random.getrandbits

FORWARDED_HEADER = "X-Metronome-Forwarded"
"""``POST /ticks`` with this header (``1``): each tick carries ``event_id``, the event id
the sending Metronome gave it (a ``metronome`` destination sends it), and is stored under
:func:`forwarded_event_id`, so a batch sent again is stored once."""

SENDER_ID = re.compile(r"^[0-9a-f]{32}$")
"""What a forwarded tick's ``event_id`` must be: an event id of the sending Metronome."""


def forwarded_event_id(site_id: str, sender_id: str) -> str:
    """The id of an event another Metronome forwarded (``POST /ticks`` with
    ``X-Metronome-Forwarded``), from the sender's own event id: the same sender id for the
    same site always gives the same id, so a batch the sender sends again after a crash is
    stored once. 12 hex digits of the sender id's time (ids still sort by time), then 20
    of SHA-256 of the site and the sender id (a sender can only ever name events of the
    sites its key may send to, never overwrite another site's)."""
    digest = hashlib.sha256(f"{site_id}\0{sender_id}".encode()).hexdigest()
    return sender_id[:12] + digest[:20]


def with_event_id(document: Document, event_id: str) -> Document:
    """``document`` under another id (its ``event.id`` too); its source is rebuilt, not
    changed in place."""
    source = {**document.source, "event": {**document.source["event"], "id": event_id}}
    return Document(event_id, document.timestamp_ms, document.dataset, source)


def format_timestamp(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC with milliseconds, as Logstash writes them."""
    seconds, millis = divmod(ms, 1000)
    prefix = _SECOND_TEXT.get(seconds)
    if prefix is None:
        prefix = datetime.fromtimestamp(seconds, tz=UTC).isoformat()[:19]
        if len(_SECOND_TEXT) >= 4096:
            _SECOND_TEXT.clear()
        _SECOND_TEXT[seconds] = prefix
    return f"{prefix}.{millis:03d}Z"


# "YYYY-MM-DDTHH:MM:SS" per epoch second: every tick formats two times (the event's and
# its arrival), nearly always in a second already seen
_SECOND_TEXT: dict[int, str] = {}


def parse_iso(text: str, default_tz: tzinfo = UTC) -> datetime | None:
    """ISO 8601 text (``Z`` allowed) as an aware datetime; no offset means ``default_tz``.
    None when the text is not ISO 8601."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=default_tz)


def parse_iso_ms(text: str, default_tz: tzinfo = UTC) -> int | None:
    """ISO 8601 text (``Z`` allowed) to epoch ms; no offset means ``default_tz``.

    None when the text is not ISO 8601, so callers can name their own field in the error.
    """
    moment = parse_iso(text, default_tz)
    return None if moment is None else int(moment.timestamp() * 1000)
