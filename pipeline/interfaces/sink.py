"""The sink interface: idempotent, keyed writes of vectors and cheap state lookups."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

import numpy as np

from pipeline.config import FieldMap
from pipeline.errors import ConfigError
from pipeline.interfaces.checkpoint import SinkHome
from pipeline.records import Chunk, DeadLetter, StoredState, VectorRecord

#: Filters a sink's search may apply itself; the caller resolves the others into episode ids.
EPISODE, PODCAST, SINCE = "episode", "podcast", "since"


@dataclass(slots=True)
class VectorQuery:
    """One search asked of a sink: a query vector, how many hits, and what to keep.

    Only vectors with ``fingerprint`` are compared (another model's vectors live in
    another space). ``episode_ids`` empty means every episode; ``podcast_ids`` and
    ``since`` are set only when the sink said it can apply them (``search_filters``).
    ``fields`` names the chunk's fields in the source (where in-place vectors find them).
    """

    vector: np.ndarray
    k: int
    fingerprint: str
    fields: FieldMap
    episode_ids: tuple[str, ...] = ()
    podcast_ids: tuple[str, ...] = ()
    since: datetime | None = None
    # The stored vectors of this fingerprint are unit length (model.normalize): dot = cosine.
    unit_vectors: bool = False


@dataclass(slots=True)
class VectorHit:
    """A stored vector near the query: its chunk, its cosine similarity, what the sink knows of it."""

    chunk_id: str
    score: float
    episode_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class SearchOutcome:
    """A sink's answer: hits best first, how it searched, and what the user should know."""

    hits: list[VectorHit]
    method: str  # "exact" or "vectorSearch"
    scanned: int = 0  # vectors compared (exact search)
    notices: list[str] = field(default_factory=list)


@dataclass(slots=True)
class IndexOutcome:
    """What ``podembed index`` did, and the index definition it used."""

    status: str  # created, updated, exists, unsupported (printed for the user) or not_needed
    message: str
    definition: dict[str, Any] | None = None


@dataclass(slots=True)
class WriteOutcome:
    """What one write did: vectors stored, and chunks the store refused (with its reason).

    The rest of ``records`` were not stored because their text changed or their chunk
    went away meanwhile (``stale_dropped``)."""

    written: int
    refused: list[DeadLetter] = field(default_factory=list)


class Sink(ABC):
    """Stores one vector per chunk id.

    ``write`` must be idempotent (a retried or re-run batch overwrites, never adds)
    and atomic per unit it documents, because executors may deliver a batch twice
    and a process may die at any instruction.
    """

    Options: ClassVar[type]
    #: The checkpoint store kind that lives beside this sink unless the config names one.
    default_checkpoint: ClassVar[str]

    @classmethod
    @abstractmethod
    def open(cls, options: Any, dimension: int) -> Sink:
        """Open (creating what is missing: folders, indexes) and check it is writable."""

    @classmethod
    @abstractmethod
    def home(cls, options: Any) -> SinkHome:
        """Where this sink's data lives (without opening it): the checkpoint store's default home."""

    @classmethod  # noqa: B027 - optional hook
    def check_fields(cls, options: Any, fields: FieldMap, source_options: Any) -> None:
        """Check the source's field names against the sink's (a sink writing onto source records).

        ``source_options``: the source's parsed options; a sink recognises a source of its own
        technology by their type."""

    @abstractmethod
    def describe(self) -> str:
        """Where vectors go, safe to print (no secrets)."""

    @abstractmethod
    def lookup(self, chunks: list[Chunk]) -> dict[str, StoredState]:
        """Stored state (hash, fingerprint, run) of these chunks, without reading vectors."""

    @abstractmethod
    def write(self, records: list[VectorRecord]) -> int:
        """Upsert vectors keyed by chunk id; returns how many were written."""

    def write_all(self, records: list[VectorRecord]) -> WriteOutcome:
        """:meth:`write`, telling apart the chunks the store refused one by one (a document
        over a size limit, a validation rule): those become dead letters and the run goes on.

        A sink whose store can refuse single documents overrides this; a failure of the
        store itself still raises."""
        return WriteOutcome(self.write(records))

    @abstractmethod
    def iter_states(self) -> Iterator[StoredState]:
        """Every stored chunk's state (for status and removed-chunk detection)."""

    @abstractmethod
    def delete(self, chunk_ids: Iterable[str]) -> int:
        """Remove these chunks' vectors; returns how many were removed."""

    def recover(self) -> None:  # noqa: B027 - optional hook
        """Finish or undo what a killed run left half-done (temp files, stray rows).

        Called at the start of every run. Runs may overlap: an implementation must not
        touch what a live writer is in the middle of (the Parquet sink takes its write lock).
        """

    # ------------------------------------------------------------------ search
    # Technology-specific implementations live in pipeline/<technology>/search.py.
    def fingerprint_counts(self) -> dict[str, int]:
        """Stored vectors per model fingerprint (search compares only the configured one)."""
        return dict(Counter(s.model_fingerprint for s in self.iter_states()))

    def search_filters(self, fields: FieldMap) -> frozenset[str]:
        """Which of ``EPISODE``, ``PODCAST``, ``SINCE`` :meth:`search` applies itself."""
        return frozenset({EPISODE})

    def search(self, query: VectorQuery) -> SearchOutcome:
        """The ``query.k`` stored vectors most similar (cosine) to ``query.vector``, best first."""
        raise ConfigError(f"sink: {self.describe()} cannot be searched")

    def ensure_search_index(self, fields: FieldMap) -> IndexOutcome:
        """Create (idempotently) whatever index search needs; by default there is none."""
        return IndexOutcome("not_needed", f"{self.describe()}: search scans the vectors; nothing to index")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release resources."""
