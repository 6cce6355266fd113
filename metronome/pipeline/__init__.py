"""The write path between the API and the store.

Today :class:`Pipeline` writes each request's documents to the store before the request is
answered. The durable spool (acknowledge once on disk, ship in bulk) replaces its inside
without changing its callers.
"""

from __future__ import annotations

from collections.abc import Sequence

from metronome.events.document import Document
from metronome.store.base import Store, WriteOutcome

__all__ = ["Pipeline"]


class Pipeline:
    """Accepts validated documents and answers, per document, whether they are safe."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def ingest(self, documents: Sequence[Document]) -> list[WriteOutcome]:
        """Store ``documents``; raises StoreUnavailable when none could be handled."""
        if not documents:
            return []
        return await self._store.write(documents)
