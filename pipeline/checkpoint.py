"""The checkpoint-store interface: what a run has done, who holds the target, what failed."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.records import DeadLetter


@dataclass(slots=True, frozen=True)
class StoredDeadLetter:
    """A dead letter as stored, with when it was first and last seen."""

    chunk_id: str
    field: str
    reason: str
    run_id: str
    first_seen: str
    last_seen: str
    text_sha256: str | None = None
    episode_id: str | None = None


@dataclass(frozen=True, slots=True)
class SinkHome:
    """Where a sink keeps its vectors, so that a checkpoint store can live beside them."""

    target: str  # a stable name for the sink's data: one ledger serves one target
    folder: str = ""  # a local folder (file sinks)
    database: str = ""  # a MongoDB database (MongoDB sinks)
    uri_env: str = ""  # the environment variable holding that database's URI


class CheckpointStore(ABC):
    """Remembers runs and shards so an interrupted run resumes, and holds the target's lock.

    One store serves one target (sink). Shard states: ``done`` means every chunk of
    the shard is written or dead-lettered; anything else is redone on resume, which
    is safe because sink writes are idempotent.
    """

    Options: ClassVar[type]

    @classmethod
    @abstractmethod
    def open(cls, options: Any, home: SinkHome) -> CheckpointStore:
        """Open the store; ``home`` lets it default to living beside the sink."""

    # -- lock ---------------------------------------------------------------------------
    @abstractmethod
    def acquire(self, owner: str) -> None:
        """Take the target for this run or raise :class:`~pipeline.errors.LockedError`."""

    def heartbeat(self) -> None:  # noqa: B027 - lease-based stores renew here
        """Renew the lock; called periodically during a run."""

    @abstractmethod
    def release(self) -> None:
        """Give the target back (also on failure)."""

    # -- runs and shards ----------------------------------------------------------------
    @abstractmethod
    def find_resumable(self, plan_key: str) -> str | None:
        """The id of an unfinished run with the same plan key, if any."""

    @abstractmethod
    def start_run(self, run_id: str, plan_key: str, command: str, meta: dict[str, Any]) -> None:
        """Record a new run (or re-open a resumed one)."""

    @abstractmethod
    def done_shards(self, run_id: str) -> set[str]:
        """Shards of ``run_id`` that are complete."""

    @abstractmethod
    def mark_shard_done(self, run_id: str, shard_id: str, counts: dict[str, int]) -> None:
        """Record that a shard is complete (after its vectors are durably written)."""

    @abstractmethod
    def finish_run(self, run_id: str, status: str, report: dict[str, Any]) -> None:
        """Close a run: ``completed``, ``interrupted`` or ``failed``, with its report."""

    @abstractmethod
    def last_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        """The most recent runs, newest first: id, command, status, started/finished, report."""

    # -- dead letters -------------------------------------------------------------------
    @abstractmethod
    def add_dead_letters(self, run_id: str, letters: Iterable[DeadLetter]) -> None:
        """Record failures (upsert by chunk id, keeping first_seen)."""

    @abstractmethod
    def dead_letters(self, chunk_ids: Iterable[str]) -> dict[str, StoredDeadLetter]:
        """Stored dead letters for these chunk ids."""

    @abstractmethod
    def clear_dead_letters(self, chunk_ids: Iterable[str]) -> None:
        """Forget failures of chunks that have now been embedded."""

    @abstractmethod
    def list_dead_letters(self, limit: int | None = None) -> list[StoredDeadLetter]:
        """All stored dead letters (newest first)."""

    @abstractmethod
    def count_dead_letters(self) -> int:
        """How many chunks are dead-lettered."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
