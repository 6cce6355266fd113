"""Storage: one small interface (:class:`~metronome.store.base.Store`), two backends."""

from __future__ import annotations

from metronome.config import Settings
from metronome.store.base import SchemaChange, Store, WriteOutcome

__all__ = ["SchemaChange", "Store", "WriteOutcome", "open_store"]


def open_store(settings: Settings) -> Store:
    """The store the settings ask for: Elasticsearch when a URL is set, else embedded.

    Use it as ``async with open_store(settings) as store:`` (opened, closed after)."""
    if settings.uses_elasticsearch:
        from metronome.store.elasticsearch import ElasticsearchStore

        return ElasticsearchStore(settings)
    from metronome.store.sqlite import SQLiteStore

    return SQLiteStore(settings)
