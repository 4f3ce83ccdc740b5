"""The source interface: plan shards, read raw records, answer id questions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.config import FieldMap
from pipeline.engine.selection import Selection
from pipeline.records import RawRecord, ShardSpec, StoredState


@dataclass(slots=True)
class ChangePlan:
    """The shards of what changed since a snapshot, and what needs no reading."""

    shards: list[ShardSpec]
    unchanged: int = 0  # chunks in units (files, documents) not read: unchanged since the snapshot
    changed_units: list[str] = field(default_factory=list)  # files (or a cursor range) to read
    gone_units: list[str] = field(default_factory=list)  # files in the snapshot that no longer exist
    # Whether chunks may have left the source (a file changed or vanished). ``None``:
    # this source cannot tell (a cursor does not see deletions; the full sweep does).
    may_have_removed: bool | None = None


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

    # ----------------------------------------------------- change-proportional nights
    def snapshot(self) -> dict[str, Any] | None:
        """The source's state now, JSON-able, for the next run to compare with; ``None``:
        this source cannot tell what changed, so every backfill reads everything.

        Taken when a run starts and stored only when that run completes.
        """
        return None

    def plan_since(self, selection: Selection, since: dict[str, Any]) -> ChangePlan:
        """Shards of only what may have changed since the snapshot ``since``.

        Sources without change detection plan everything.
        """
        return ChangePlan(shards=self.plan(selection))

    def count(self) -> int | None:
        """How many records the source holds, from metadata (``None`` when unknown)."""
        return None

    def missing_ids(self, chunk_ids: Iterable[str]) -> Iterator[str]:
        """The ids among ``chunk_ids`` that the source lacks (removed chunks).

        The default pages :meth:`existing_ids`; a source that would rebuild an index per
        page answers all ids in one pass instead.
        """
        page: list[str] = []
        for cid in chunk_ids:
            page.append(cid)
            if len(page) >= REMOVED_PAGE:
                existing = self.existing_ids(page)
                yield from (c for c in page if c not in existing)
                page = []
        if page:
            existing = self.existing_ids(page)
            yield from (c for c in page if c not in existing)

    def distinct_values(self, name: str, among: Iterable[str] | None = None) -> set[str] | None:
        """The values of our field ``name`` (``episode_id``, ``podcast_id``) in the source, as
        text; with ``among``, only those of ``among`` that occur. ``None``: this source cannot
        tell cheaply (callers then skip the check that asked)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and file handles."""


REMOVED_PAGE = 10_000  # ids asked of the source at once: bounded memory, few round trips


def removed_ids(source: Source, states: Iterable[StoredState]) -> Iterator[str]:
    """Yield the ids of ``states`` that do not exist in ``source`` (linear in both)."""
    return source.missing_ids(state.chunk_id for state in states)


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
