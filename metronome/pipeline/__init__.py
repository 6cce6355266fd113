"""The write path between the API and the store.

:class:`Pipeline` acknowledges documents once they are durable in this process's spool
segment (:mod:`.spool`); the shipper (:mod:`.shipper`, run by ``metronome worker`` or
started by ``metronome serve``) moves them to the store in bulk.
"""

from __future__ import annotations

from collections.abc import Sequence

from metronome.config import Settings
from metronome.events.document import Document
from metronome.pipeline.records import encode_many
from metronome.pipeline.spool import SpoolWriter, spool_dir
from metronome.store.base import WriteOutcome

__all__ = ["Pipeline"]


class Pipeline:
    """Accepts validated documents; answers once they are safe on disk."""

    def __init__(self, settings: Settings) -> None:
        self.spool = spool_dir(settings.data_dir)
        self._writer = SpoolWriter(
            self.spool,
            segment_max_bytes=settings.spool_segment_bytes,
            max_total_bytes=settings.spool_max_bytes,
        )

    async def ingest(self, documents: Sequence[Document]) -> list[WriteOutcome]:
        """Spool ``documents`` durably. Raises SpoolFull at the limit, StoreUnavailable when
        the disk fails; then nothing of this call is acknowledged."""
        if not documents:
            return []
        await self._writer.append(encode_many(documents))
        return [WriteOutcome(d.id, True) for d in documents]

    def spool_has_room(self) -> bool:
        return self._writer.has_room()

    def close(self) -> None:
        self._writer.close()
