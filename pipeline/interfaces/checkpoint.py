"""The checkpoint-store interface: what a run has done, which run works on what, what failed."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.errors import ConfigError
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


@dataclass(slots=True, frozen=True)
class SourceSnapshot:
    """What a source looked like when the last *completed* whole-source run started.

    ``state`` is the source's own JSON (file fingerprints, a cursor's high-water mark);
    ``basis`` digests what else decides the vectors (model fingerprint, field mapping,
    source options): a snapshot taken under another basis is not used.
    """

    source_key: str
    run_id: str
    basis: str
    state: dict[str, Any]
    full_sweep: bool  # the run read everything
    nights_since_full: int  # incremental runs since the last full sweep (0 after one)
    removed: int  # chunks stored but gone from the source, not pruned, as that run found
    taken_at: str


@dataclass(frozen=True, slots=True)
class SinkHome:
    """Where a sink keeps its vectors, so that a checkpoint store can live beside them.

    ``where`` is opaque to the core: a sink puts in what a ledger of its own technology
    reads (the file sink a ``folder``; the MongoDB sink a ``database`` and ``uri_env``).
    """

    target: str  # a stable name for the sink's data: one ledger serves one target
    where: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Holder:
    """The live run that holds a claim."""

    owner: str
    run_id: str
    command: str

    def describe(self) -> str:
        """``run <id> (<command>, <owner>)`` for messages."""
        return f"run {self.run_id or '(starting)'} ({self.command}, {self.owner})"


@dataclass(slots=True)
class LiveRun:
    """A run that is alive now, and the units (episodes) it holds."""

    owner: str
    run_id: str
    command: str
    selection: str
    started_at: str
    claims: list[str]


# How long an ingest or reindex waits, in all, for episodes other live runs are embedding
# (one budget per run). Every store's ``claim_wait_s`` option defaults to this.
CLAIM_WAIT_S = 600.0


def check_claim_wait(value: float, key: str) -> None:
    """The ``claim_wait_s`` rule every store's options share: finite, not negative."""
    if not 0 <= value < float("inf"):
        raise ConfigError(f"{key}: must be a number of seconds, 0 or more (got {value!r})")


class CheckpointStore(ABC):
    """Remembers runs and shards so an interrupted run resumes, and who works on what.

    One store serves one target (sink). Runs on one target overlap freely: each takes
    *claims* on the episodes it is about to embed, so two runs never embed the same
    chunk; a dead run's claims free themselves. Shard states: ``done`` means every
    chunk of the shard is written or dead-lettered; anything else is redone on resume,
    which is safe because sink writes are idempotent.
    """

    Options: ClassVar[type]

    @classmethod
    @abstractmethod
    def open(cls, options: Any, home: SinkHome) -> CheckpointStore:
        """Open the store; ``home`` lets it default to living beside the sink."""

    # How long an ingest or reindex waits for an episode another run holds (stores set it
    # from their options), and how often it looks again.
    claim_wait_s: float = CLAIM_WAIT_S
    claim_poll_s: float = 0.25

    # -- live runs and claims --------------------------------------------------------
    @abstractmethod
    def register(self, owner: str, command: str, selection: str) -> None:
        """Announce this process as a live run; ``owner`` is unique per run (see liveness)."""

    @abstractmethod
    def claim(self, units: Collection[str]) -> dict[str, Holder]:
        """Atomically take every unit that is free, already ours, or held by a dead run.

        Returns the units another *live* run holds, with who holds them; the caller
        leaves those alone (or waits). A unit is an episode id.
        """

    @abstractmethod
    def release_claims(self, units: Collection[str]) -> None:
        """Give units back (their work is written)."""

    def heartbeat(self) -> None:  # noqa: B027 - lease-based stores renew here
        """Show this run is alive; called periodically during a run."""

    @abstractmethod
    def unregister(self) -> None:
        """Release every claim and stop being a live run (also on failure)."""

    @abstractmethod
    def live_runs(self) -> list[LiveRun]:
        """Runs that are alive now, with the units they hold (for ``status``)."""

    # -- runs and shards ----------------------------------------------------------------
    @abstractmethod
    def find_resumable(self, plan_key: str) -> str | None:
        """Take over the newest unfinished run with this plan key whose owner is gone.

        Returns its id, now owned by this run (call :meth:`register` first), or ``None``
        when the newest such run completed or every unfinished one is alive.
        """

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

    # -- source snapshots (change-proportional nights) --------------------------------------
    def source_snapshot(self, source_key: str) -> SourceSnapshot | None:
        """The snapshot the last completed whole-source run recorded (``None``: none, or a
        store that keeps none, so every backfill reads everything)."""
        return None

    def save_source_snapshot(self, snapshot: SourceSnapshot) -> None:  # noqa: B027 - optional
        """Record ``snapshot`` (called only after its run completed), replacing the last one."""

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
