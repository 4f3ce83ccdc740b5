"""A shard whose batches are with the executor: results become vector records or dead letters."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from time import monotonic

from pipeline.engine.shard_work import MODEL_FAILURE_FIELD, Prepared
from pipeline.records import BatchResult, DeadLetter, VectorRecord
from pipeline.reporting.report import Counts


@dataclass(slots=True)
class InFlight:
    """One shard between the executor and the writer: what came back so far."""

    prepared: Prepared
    remaining: int  # batches not answered yet
    records: list[VectorRecord] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    # When the oldest record not yet handed to the writer was embedded (monotonic seconds).
    oldest: float | None = None
    # Records and dead letters already handed to the writer by :meth:`split`.
    split_off: int = 0
    # When the last result came back, and how long the one before it took to come.
    last_result: float | None = None
    step_s: float = 0.0

    def absorb(self, result: BatchResult, fingerprint: str, run_id: str, instruction: str) -> None:
        """Turn one batch's result into records to write, or model-failure dead letters."""
        chunks = self.prepared.chunks
        now = datetime.now(UTC)
        for row, cid in enumerate(result.chunk_ids):
            chunk = chunks[cid]
            reason = result.error or result.failed.get(cid)
            if reason is not None:
                self.dead.append(
                    DeadLetter(
                        chunk_id=cid,
                        field=MODEL_FAILURE_FIELD,
                        reason=reason,
                        episode_id=chunk.episode_id,
                        text_sha256=chunk.sha256,
                    )
                )
                continue
            self.records.append(
                VectorRecord(
                    chunk_id=cid,
                    episode_id=chunk.episode_id,
                    # A copy, not a view: a view keeps the whole batch's array alive until
                    # the shard is written (the executor's per-batch buffer, times batches).
                    embedding=result.vectors[row].copy(),
                    text_sha256=chunk.sha256,
                    model_fingerprint=fingerprint,
                    instruction=instruction,
                    embedded_at=now,
                    run_id=run_id,
                    text=chunk.text,
                )
            )
        now = monotonic()
        if self.last_result is not None:
            self.step_s = now - self.last_result
        self.last_result = now
        if self.records and self.oldest is None:
            self.oldest = now

    def due(self, every_s: float) -> bool:
        """Whether the records waiting for the shard's last batch would be ``every_s`` old by
        the next result (judged by the last step): time to write them, so a kill loses about
        ``every_s`` of embedding at most (plus the batch being embedded)."""
        if self.remaining == 0 or self.oldest is None:
            return False
        return monotonic() - self.oldest + self.step_s >= every_s

    def split(self) -> InFlight:
        """Hand over what is embedded so far, as a part of the shard the writer writes but
        never marks done (the shard is done when its last batch is written)."""
        part = InFlight(
            prepared=replace(
                self.prepared,
                chunks={},
                batches=[],
                dead_letters=[],  # the shard's own (validation) letters go with its last part
                counts=Counts(),
                tokens=0,
                padded_tokens=0,
                complete=False,
                claimed=set(),  # claims are given back when the whole shard is written
                left_to_others={},
                reasons=Counter(),
            ),
            remaining=self.remaining,
            records=self.records,
            dead=self.dead,
        )
        self.split_off += len(self.records) + len(self.dead)
        self.records, self.dead, self.oldest = [], [], None
        return part
