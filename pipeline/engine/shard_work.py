"""Preparing a shard: read, validate, decide what needs embedding, count tokens, batch.

Shared by runs, ``plan`` (which stops here) and ``status``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import Config
from pipeline.engine.batching import Item, make_batches
from pipeline.engine.claims import Claims
from pipeline.engine.selection import Selection
from pipeline.engine.validation import validate
from pipeline.interfaces.checkpoint import CheckpointStore, Holder
from pipeline.interfaces.sink import Sink
from pipeline.interfaces.source import Source
from pipeline.model.tokens import TokenCounter
from pipeline.parts import Parts
from pipeline.records import Batch, Chunk, DeadLetter, ShardSpec, StoredState
from pipeline.reporting.report import Counts

# A dead letter left by validation is re-checked every run; one left by the model is
# retried only when the text changes (or with --retry-failed).
MODEL_FAILURE_FIELD = "embedding"
#: The decisions that send a chunk to the model.
WORK_REASONS = frozenset({"new", "changed", "other_model", "moved", "forced"})


@dataclass(slots=True)
class Prepared:
    """One shard, ready for an executor."""

    shard: ShardSpec
    chunks: dict[str, Chunk]
    batches: list[Batch]
    dead_letters: list[DeadLetter]
    counts: Counts
    tokens: int = 0
    padded_tokens: int = 0
    complete: bool = True  # False when --limit left part of the shard for later
    previously_failed: set[str] = field(default_factory=set)
    claimed: set[str] = field(default_factory=set)  # episodes this run holds for the shard
    left_to_others: dict[str, Holder] = field(default_factory=dict)  # episodes other runs hold
    reasons: Counter[str] = field(default_factory=Counter)  # every valid chunk's Decision.reason


@dataclass(slots=True)
class Decision:
    """Why a valid chunk is or is not embedded."""

    needs_work: bool
    reason: str  # new | changed | other_model | moved | forced | current | failed_before


def decide(
    chunk: Chunk,
    state: StoredState | None,
    fingerprint: str,
    force: bool,
    run_id: str,
) -> Decision:
    """The incremental rule: new, changed text, or another model's vector means work."""
    if force:
        # A forced run resumed after a crash skips what this very run already wrote.
        if state and state.run_id == run_id and state.text_sha256 == chunk.sha256:
            return Decision(False, "current")
        return Decision(True, "forced")
    if state is None:
        return Decision(True, "new")
    if state.text_sha256 != chunk.sha256:
        return Decision(True, "changed")
    if state.model_fingerprint != fingerprint:
        return Decision(True, "other_model")
    if state.episode_id is not None and state.episode_id != chunk.episode_id:
        # Same text, new episode: the stored vector's episode (and its file) must follow.
        return Decision(True, "moved")
    return Decision(False, "current")


class Preparer:
    """Turns shards into :class:`Prepared` work for one run."""

    def __init__(
        self,
        config: Config,
        source: Source,
        sink: Sink,
        checkpoint: CheckpointStore,
        counter: TokenCounter | Callable[[], TokenCounter] | None,
        fingerprint: str,
        selection: Selection,
        run_id: str,
        *,
        force: bool = False,
        retry_failed: bool = False,
        limit: int | None = None,
        duplicates: dict[str, int] | Callable[[], dict[str, int]] | None = None,
        claims: Claims | None = None,
        on_decided: Callable[[Prepared], None] | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.sink = sink
        self.checkpoint = checkpoint
        # A factory defers loading the tokenizer (or the model) until a shard needs it:
        # a run with nothing to embed then starts and ends in seconds.
        self._counter: Any = counter
        self.fingerprint = fingerprint
        self.selection = selection
        self.run_id = run_id
        self.force = force
        self.retry_failed = retry_failed
        self.remaining = limit
        # A factory defers reading the source's ids until a shard is read: a night with
        # nothing changed reads no id column at all.
        self._duplicates: Any = duplicates if duplicates is not None else {}
        # Runs claim each shard's episodes before deciding (plan and status do not).
        self.claims = claims
        # Told each shard's decisions before its tokens are counted (the model may load then).
        self.on_decided = on_decided

    @classmethod
    def for_parts(
        cls,
        config: Config,
        parts: Parts,
        selection: Selection,
        *,
        fingerprint: str,
        counter: TokenCounter | Callable[[], TokenCounter] | None,
        run_id: str,
        force: bool = False,
        retry_failed: bool = False,
        limit: int | None = None,
        claims: Claims | None = None,
        on_decided: Callable[[Prepared], None] | None = None,
    ) -> Preparer:
        """A preparer over opened parts (runs, ``plan`` and ``status`` all build it here).

        ``counter`` is ``None`` when no batches are wanted (``status``), or a factory that
        defers loading the tokenizer until a shard needs it.
        """
        return cls(
            config,
            parts.source,
            parts.sink,
            parts.checkpoint,
            counter,
            fingerprint,
            selection,
            run_id,
            force=force,
            retry_failed=retry_failed,
            limit=limit,
            duplicates=lambda: parts.source.duplicate_ids(selection),
            claims=claims,
            on_decided=on_decided,
        )

    @property
    def duplicates(self) -> dict[str, int]:
        """Chunk ids found more than once in the source, read on first use."""
        if callable(self._duplicates):
            self._duplicates = self._duplicates()
        return self._duplicates

    def counter(self) -> TokenCounter:
        """The token counter, created on first use."""
        if not isinstance(self._counter, TokenCounter):
            self._counter = self._counter()
        return self._counter

    def prepare(self, shard: ShardSpec) -> Prepared:
        """Read one shard and decide, chunk by chunk, what to embed."""
        counts = Counts()
        valid: list[Chunk] = []
        dead: list[DeadLetter] = []
        for record in self.source.read(shard, self.selection):
            counts.seen += 1
            result = validate(record, self.duplicates)
            if isinstance(result, DeadLetter):
                dead.append(result)
            else:
                valid.append(result)
        claimed: set[str] = set()
        left: dict[str, Holder] = {}
        if self.claims is not None and valid:
            episodes = {c.episode_id for c in valid}
            left = self.claims.take(episodes)
            claimed = episodes - left.keys()
            if left:
                # The holder writes these (and records their dead letters).
                valid = [c for c in valid if c.episode_id not in left]
                dead = [d for d in dead if d.episode_id not in left]
                counts.claimed_elsewhere = counts.seen - len(valid) - len(dead)
        counts.dead_lettered = len(dead)
        states = self.sink.lookup(valid) if valid else {}
        failures = self.checkpoint.dead_letters([c.chunk_id for c in valid]) if valid else {}
        todo: list[Chunk] = []
        previously_failed: set[str] = set()
        reasons: Counter[str] = Counter()
        for chunk in valid:
            decision = decide(chunk, states.get(chunk.chunk_id), self.fingerprint, self.force, self.run_id)
            failure = failures.get(chunk.chunk_id)
            if failure is not None:
                previously_failed.add(chunk.chunk_id)
            if (
                decision.needs_work
                and failure is not None
                and failure.field == MODEL_FAILURE_FIELD
                and failure.text_sha256 == chunk.sha256
                and not self.retry_failed
            ):
                decision = Decision(False, "failed_before")
            reasons[decision.reason] += 1
            if not decision.needs_work:
                if decision.reason == "failed_before":
                    counts.skipped_failed += 1
                else:
                    counts.skipped += 1
                continue
            todo.append(chunk)
        complete = True
        if self.remaining is not None:
            if len(todo) > self.remaining:
                counts.deferred += len(todo) - self.remaining
                # Deterministic choice so a resumed --limit run picks the same chunks.
                todo = sorted(todo, key=lambda c: c.chunk_id)[: self.remaining]
                complete = False
            self.remaining -= len(todo)
        prepared = Prepared(
            shard=shard,
            chunks={c.chunk_id: c for c in todo},
            batches=[],
            dead_letters=dead,
            counts=counts,
            complete=complete and not left,
            previously_failed=previously_failed,
            claimed=claimed,
            left_to_others=left,
            reasons=reasons,
        )
        if self.on_decided is not None:
            self.on_decided(prepared)
        if todo and self._counter is not None:
            stripped = [c.text.strip() for c in todo]
            token_counts = self.counter().count(stripped)
            items = [
                Item(c.chunk_id, t, tc.tokens) for c, t, tc in zip(todo, stripped, token_counts, strict=True)
            ]
            counts.truncated = sum(tc.truncated for tc in token_counts)
            b = self.config.batching
            prepared.batches = make_batches(items, b.token_budget, b.max_batch_size, shard.shard_id)
            prepared.tokens = sum(it.tokens for it in items)
            prepared.padded_tokens = sum(batch.padded_tokens for batch in prepared.batches)
        return prepared
