"""Preparing a shard: read, validate, decide what needs embedding, count tokens, batch.

Shared by runs, ``plan`` (which stops here) and ``status``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.config import Config
from pipeline.engine.batching import Item, make_batches
from pipeline.engine.claims import Claims
from pipeline.engine.selection import Selection
from pipeline.engine.validation import validate
from pipeline.interfaces.checkpoint import Holder
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


@dataclass(slots=True, frozen=True)
class Rule:
    """What the embed-or-skip decision depends on besides the chunk: the run's model and flags."""

    fingerprint: str
    run_id: str
    force: bool = False
    retry_failed: bool = False


def decide(chunk: Chunk, state: StoredState | None, failure: DeadLetter | None, rule: Rule) -> Decision:
    """The incremental rule, whole: new, changed text, or another model's vector means work,
    unless the model already failed on this very text (``--retry-failed`` tries again)."""
    decision = _stored_decision(chunk, state, rule)
    if (
        decision.needs_work
        and failure is not None
        and failure.field == MODEL_FAILURE_FIELD
        and failure.text_sha256 == chunk.sha256
        and not rule.retry_failed
    ):
        return Decision(False, "failed_before")
    return decision


def _stored_decision(chunk: Chunk, state: StoredState | None, rule: Rule) -> Decision:
    if rule.force:
        # A forced run resumed after a crash skips what this very run already wrote.
        if state and state.run_id == rule.run_id and state.text_sha256 == chunk.sha256:
            return Decision(False, "current")
        return Decision(True, "forced")
    if state is None:
        return Decision(True, "new")
    if state.text_sha256 != chunk.sha256:
        return Decision(True, "changed")
    if state.model_fingerprint != rule.fingerprint:
        return Decision(True, "other_model")
    if state.episode_id is not None and state.episode_id != chunk.episode_id:
        # Same text, new episode: the stored vector's episode (and its file) must follow.
        return Decision(True, "moved")
    return Decision(False, "current")


class Preparer:
    """Turns shards into :class:`Prepared` work for one run (runs, ``plan`` and ``status``)."""

    def __init__(
        self,
        config: Config,
        parts: Parts,
        selection: Selection,
        rule: Rule,
        *,
        counter: Callable[[], TokenCounter] | None = None,
        limit: int | None = None,
        claims: Claims | None = None,
        on_decided: Callable[[Prepared], None] | None = None,
    ) -> None:
        """``counter``: a factory that defers loading the tokenizer (or the model) until a shard
        needs it, so a run with nothing to embed starts and ends in seconds; ``None`` when no
        batches are wanted (``status``). ``claims``: runs claim each shard's episodes before
        deciding (plan and status do not). ``on_decided`` is told each shard's decisions before
        its tokens are counted (the model may load then)."""
        self.config = config
        self.parts = parts
        self.selection = selection
        self.rule = rule
        self._make_counter = counter
        self._counter: TokenCounter | None = None
        self.remaining = limit
        self.claims = claims
        self.on_decided = on_decided
        # Read on first use: a night with nothing changed reads no id column at all.
        self._duplicates: dict[str, int] | None = None

    @property
    def duplicates(self) -> dict[str, int]:
        """Chunk ids found more than once in the source, read on first use."""
        if self._duplicates is None:
            self._duplicates = self.parts.source.duplicate_ids(self.selection)
        return self._duplicates

    def counter(self) -> TokenCounter:
        """The token counter, created on first use."""
        if self._counter is None:
            assert self._make_counter is not None, "a preparer without a counter makes no batches"
            self._counter = self._make_counter()
        return self._counter

    def prepare(self, shard: ShardSpec) -> Prepared:
        """Read one shard and decide, chunk by chunk, what to embed."""
        counts = Counts()
        valid: list[Chunk] = []
        dead: list[DeadLetter] = []
        for record in self.parts.source.read(shard, self.selection):
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
        states = self.parts.sink.lookup(valid) if valid else {}
        failures = self.parts.checkpoint.dead_letters([c.chunk_id for c in valid]) if valid else {}
        todo: list[Chunk] = []
        previously_failed: set[str] = set()
        reasons: Counter[str] = Counter()
        for chunk in valid:
            failure = failures.get(chunk.chunk_id)
            if failure is not None:
                previously_failed.add(chunk.chunk_id)
            decision = decide(chunk, states.get(chunk.chunk_id), failure, self.rule)
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
        if todo and self._make_counter is not None:
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
