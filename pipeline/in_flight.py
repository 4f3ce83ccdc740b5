"""A shard whose batches are with the executor: results become vector records or dead letters."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from pipeline.records import BatchResult, DeadLetter, VectorRecord
from pipeline.shard_work import MODEL_FAILURE_FIELD, Prepared


@dataclass(slots=True)
class InFlight:
    """One shard between the executor and the writer: what came back so far."""

    prepared: Prepared
    remaining: int  # batches not answered yet
    records: list[VectorRecord] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)

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
