"""Storage: one small interface (:class:`~metronome.store.base.Store`), two backends."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from metronome.config import Settings
from metronome.events.document import Document
from metronome.store.base import EncodedWrite, SchemaChange, Store, WriteOutcome

__all__ = [
    "EncodedWrite",
    "SchemaChange",
    "Store",
    "WriteOutcome",
    "document_encoder",
    "open_store",
]


def open_store(settings: Settings) -> Store:
    """The store the settings ask for: Elasticsearch when a URL is set, else embedded.

    Use it as ``async with open_store(settings) as store:`` (opened, closed after)."""
    if settings.uses_elasticsearch:
        from metronome.store.elasticsearch import ElasticsearchStore

        return ElasticsearchStore(settings)
    from metronome.store.sqlite import SQLiteStore

    return SQLiteStore(settings)


def document_encoder(settings: Settings) -> Callable[[Sequence[Document]], list[Any]]:
    """What the store the settings ask for writes of each document (a row, or bulk lines),
    made without the store: a pure function a worker process runs, whose output (plain
    tuples, cheap to send between processes) goes to that store's ``write_encoded``."""
    if settings.uses_elasticsearch:  # Elasticsearch or OpenSearch: the same _bulk
        from functools import partial

        from metronome.store.elasticsearch import bulk_items

        return partial(bulk_items, settings.index_prefix)
    from metronome.store.sqlite import sqlite_rows

    return sqlite_rows
