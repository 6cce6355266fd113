"""The storage interface both backends implement, and what it returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Self

from metronome.events.document import Document
from metronome.store.query import BasketCounts, BasketQuery, GroupQuery

__all__ = [
    "EncodedWrite",
    "GroupRow",
    "Removal",
    "RetentionResult",
    "SchemaChange",
    "Store",
    "WriteOutcome",
]

GroupRow = tuple[tuple[Any, ...], tuple[Any, ...]]
"""One group of a query: its dimension keys and its raw metric values."""


@dataclass(frozen=True, slots=True)
class SchemaChange:
    """One template (or table) checked at install: was it created, updated or unchanged?"""

    name: str
    action: Literal["created", "updated", "unchanged"]


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """The store's answer for one document: stored (``existed``: it was already stored
    by an earlier write of its id, and nothing changed), or refused.

    ``retriable`` refusals (overload, outage) may succeed later; the others never will.
    """

    id: str
    ok: bool
    reason: str | None = None
    retriable: bool = False
    existed: bool = False


@dataclass(frozen=True, slots=True)
class EncodedWrite:
    """The store's answer for a batch of encoded documents (``write_encoded``): how many it
    stored now, how many it had already, and the outcome of each one it refused, by its
    position in the batch (``retriable`` ones may succeed when sent again)."""

    stored: int
    already: int
    failed: tuple[tuple[int, WriteOutcome], ...] = ()


@dataclass(frozen=True, slots=True)
class Removal:
    """One thing retention removed: a daily index (Elasticsearch) or a dataset's old rows
    (the embedded store), and how many documents went with it."""

    name: str
    documents: int


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """What :meth:`Store.delete_before` removed, or would remove on a dry run."""

    unit: Literal["indices", "rows"]
    removed: tuple[Removal, ...]
    dry_run: bool = False

    @property
    def documents(self) -> int:
        return sum(r.documents for r in self.removed)


class Store(Protocol):
    """Where documents live and reports are computed."""

    backend: str  # "elasticsearch", "opensearch" or "sqlite"

    async def open(self) -> None:
        """Connect; cheap and safe to call in every worker process."""

    async def close(self) -> None:
        """Release connections."""

    async def __aenter__(self) -> Self:
        """:meth:`open`: ``async with open_store(settings) as store:`` closes it after."""
        ...

    async def __aexit__(self, *exc_info: object) -> None:
        """:meth:`close`."""

    async def ensure_schema(self) -> list[SchemaChange]:
        """Install index templates (or tables) idempotently; report what changed."""
        ...

    async def check_ready(self) -> str | None:
        """None when the store answers and its schema is installed, else the reason."""
        ...

    async def write(self, documents: Sequence[Document]) -> list[WriteOutcome]:
        """Store documents by id (a second write of an id is a no-op); one outcome each."""
        ...

    async def write_encoded(self, batch: Sequence[Any], *, durable: bool = True) -> EncodedWrite:
        """Store documents already encoded by the encoder ``store.document_encoder`` gives
        for these settings (in another process: ``metronome import``), by id like
        :meth:`write`, answering counts rather than one outcome per document. With
        ``durable=False`` the embedded store commits without waiting for the disk (a
        process crash loses nothing, a power cut may lose the batch); the next durable
        write makes it, and every batch before it, safe from both."""
        ...

    async def groups(
        self, query: GroupQuery, *, after: tuple[Any, ...] | None, limit: int
    ) -> list[GroupRow]:
        """At most ``limit`` groups of ``query`` in key order (ascending, missing values
        first), starting after the group keyed ``after``. Time keys are bucket starts."""
        ...

    async def top(
        self, query: GroupQuery, *, metric: int, descending: bool, size: int
    ) -> list[GroupRow]:
        """The first ``size`` groups of ``query`` (one keyword dimension) ordered by its
        metric number ``metric`` (a count, distinct count, sum, avg, min or max; missing
        values smallest), ties by the key (missing first). Elasticsearch answers with a
        ``terms`` aggregation: exact while the groups fit each shard's candidates."""
        ...

    async def baskets(self, query: BasketQuery) -> BasketCounts:
        """Which items share baskets (visits, visitors' days) with ``query.item``, and how
        many baskets each item is in: what related items are scored from."""
        ...

    async def documents(self, query: GroupQuery, *, limit: int) -> list[dict[str, Any]]:
        """At most ``limit`` documents of ``query`` (its datasets, range and filter),
        oldest first (ties by event id): what journeys (funnels, flows) read of visit
        summaries."""
        ...

    async def field_names(
        self, query: GroupQuery, under: str, partition: str | None = None
    ) -> list[str]:
        """The names of the fields under the object ``under`` (``fields``) that documents
        of ``query`` hold, sorted. Elasticsearch answers from the mappings of the query's
        indices (of one ``partition``, an app, when given): a superset."""
        ...

    async def delete_matching(self, query: GroupQuery) -> int:
        """Delete every document of ``query`` (its datasets, range and filter); how many."""
        ...

    async def delete_before(
        self, datasets: Sequence[str], cutoff_ms: int, *, dry_run: bool = False
    ) -> RetentionResult:
        """Remove the documents of ``datasets`` from before ``cutoff_ms`` (00:00 UTC of a
        day): whole daily indices, or rows. ``dry_run`` only says what would go."""
        ...
