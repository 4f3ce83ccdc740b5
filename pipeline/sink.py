"""The sink interface: idempotent, keyed writes of vectors and cheap state lookups."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

from pipeline.checkpoint import SinkHome
from pipeline.config import FieldMap
from pipeline.records import Chunk, StoredState, VectorRecord


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
    def check_fields(cls, options: Any, fields: FieldMap, source_kind: str) -> None:
        """Check the source's field names against the sink's (a sink writing onto source records)."""

    @abstractmethod
    def describe(self) -> str:
        """Where vectors go, safe to print (no secrets)."""

    @abstractmethod
    def lookup(self, chunks: list[Chunk]) -> dict[str, StoredState]:
        """Stored state (hash, fingerprint, run) of these chunks, without reading vectors."""

    @abstractmethod
    def write(self, records: list[VectorRecord]) -> int:
        """Upsert vectors keyed by chunk id; returns how many were written."""

    @abstractmethod
    def iter_states(self) -> Iterator[StoredState]:
        """Every stored chunk's state (for status and removed-chunk detection)."""

    @abstractmethod
    def delete(self, chunk_ids: Iterable[str]) -> int:
        """Remove these chunks' vectors; returns how many were removed."""

    def recover(self) -> None:  # noqa: B027 - optional hook
        """Finish or undo what a killed run left half-done (temp files, stray rows).

        Called at the start of every run, with the target's lock held, so no other
        writer can be in the middle of a write.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release resources."""
