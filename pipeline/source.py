"""The source interface: plan shards, read raw records, answer id questions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

from pipeline.config import FieldMap
from pipeline.records import RawRecord, ShardSpec, StoredState
from pipeline.selection import Selection


class Source(ABC):
    """Reads transcript chunks. Implementations stream: memory must not grow with the input.

    Records come back raw (``RawRecord`` with our field names as keys) because
    validation, not the source, decides what is a bad record; a source only raises
    :class:`~pipeline.errors.SourceError` when it cannot be read at all.
    """

    Options: ClassVar[type]

    @classmethod
    @abstractmethod
    def open(cls, options: Any, fields: FieldMap, window_chunks: int) -> Source:
        """Connect/open and check that the source is readable and has the mapped fields."""

    @abstractmethod
    def describe(self) -> str:
        """Where this source reads from, safe to print (no secrets)."""

    @abstractmethod
    def version(self) -> str:
        """A token that changes when the source's content may have changed (resume key)."""

    @abstractmethod
    def plan(self, selection: Selection) -> list[ShardSpec]:
        """Cut the selected part of the source into shards of about ``window_chunks`` records."""

    @abstractmethod
    def read(self, shard: ShardSpec, selection: Selection) -> Iterator[RawRecord]:
        """Stream the records of one shard that match ``selection``."""

    @abstractmethod
    def duplicate_ids(self, selection: Selection) -> dict[str, int]:
        """Chunk ids that occur more than once in the selection, with their counts."""

    @abstractmethod
    def existing_ids(self, chunk_ids: Iterable[str]) -> set[str]:
        """Which of ``chunk_ids`` exist in the whole source (to find removed chunks)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and file handles."""


REMOVED_PAGE = 10_000  # ids asked of the source at once: bounded memory, few round trips


def removed_ids(source: Source, states: Iterable[StoredState]) -> Iterator[str]:
    """Yield the ids of ``states`` that do not exist in ``source``, paging the lookups."""
    page: list[str] = []
    for state in states:
        page.append(state.chunk_id)
        if len(page) >= REMOVED_PAGE:
            existing = source.existing_ids(page)
            yield from (cid for cid in page if cid not in existing)
            page = []
    if page:
        existing = source.existing_ids(page)
        yield from (cid for cid in page if cid not in existing)


def unowned_ids(source: Source, states: Iterable[StoredState]) -> Iterator[str]:
    """Stored vectors no single chunk of the source owns any more: the chunk left the source,
    or its id is now shared by several records (those are dead-lettered, and the vector
    embedded before the id was duplicated answers for none of them). ``--prune`` deletes them."""
    duplicated = source.duplicate_ids(Selection())
    shared: list[str] = []

    def owned(states: Iterable[StoredState]) -> Iterator[StoredState]:
        for state in states:
            if state.chunk_id in duplicated:
                shared.append(state.chunk_id)
            else:
                yield state

    yield from removed_ids(source, owned(states))
    yield from shared
