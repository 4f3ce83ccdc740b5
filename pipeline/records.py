"""Plain data passed between the stages of a run.

Every stage speaks in these dataclasses, never in a source's or sink's native
rows, so that a new source or sink only has to convert at its edge.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np


def text_sha256(text: str) -> str:
    """Hash of a chunk's text as stored with its vector (UTF-8, not stripped)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(slots=True)
class Chunk:
    """One transcript chunk as read from a source, already validated."""

    chunk_id: str
    episode_id: str
    text: str
    podcast_id: str | None = None
    chunk_index: int | None = None
    start_s: float | None = None
    end_s: float | None = None
    published_at: datetime | None = None
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.sha256:
            self.sha256 = text_sha256(self.text)


@dataclass(slots=True)
class RawRecord:
    """A record as the source found it, before validation (any field may be wrong)."""

    fields: dict[str, Any]
    position: str  # where it came from, for error messages: "file.parquet row 17"


@dataclass(slots=True, frozen=True)
class DeadLetter:
    """A chunk that could not be embedded, and why."""

    chunk_id: str
    field: str
    reason: str
    episode_id: str | None = None
    text_sha256: str | None = None
    position: str | None = None


@dataclass(slots=True, frozen=True)
class StoredState:
    """What the sink holds for one chunk: enough to decide whether it needs work."""

    chunk_id: str
    text_sha256: str
    model_fingerprint: str
    run_id: str
    episode_id: str | None = None


@dataclass(slots=True, frozen=True)
class ShardSpec:
    """A unit of planned work: small, serialisable, stable across reruns of the same input."""

    shard_id: str
    # Source-specific locator (row-group range, list of episode ids, ...): JSON-serialisable.
    locator: dict[str, Any]
    estimated_chunks: int = 0


@dataclass(slots=True)
class Batch:
    """Texts sent to an executor in one forward pass. Texts are already stripped."""

    batch_id: str
    chunk_ids: list[str]
    texts: list[str]
    token_counts: list[int]
    padded_tokens: int

    @property
    def real_tokens(self) -> int:
        """Tokens that carry content (instruction included), i.e. excluding padding."""
        return sum(self.token_counts)


@dataclass(slots=True)
class BatchResult:
    """What an executor returns for one batch; results may arrive in any order.

    ``vectors`` has one float32 row per chunk id, in the batch's order. Rows whose
    chunk id is in ``failed`` are meaningless and must not be written.
    """

    batch_id: str
    chunk_ids: list[str]
    vectors: np.ndarray
    failed: dict[str, str] = field(default_factory=dict)
    compute_s: float = 0.0
    load_s: float = 0.0
    fp32_retries: int = 0
    error: str | None = None  # set when the whole batch failed; every chunk is dead-lettered
    precision: str = ""  # what it was computed in: fp32, bf16, bf16-autocast, fp16
    precision_reason: str = ""  # and why: "auto → fp32: cpu has no bf16 units (avx2)"


@dataclass(slots=True)
class VectorRecord:
    """One vector ready for a sink, with the metadata stored beside it."""

    chunk_id: str
    episode_id: str
    embedding: np.ndarray
    text_sha256: str
    model_fingerprint: str
    instruction: str
    embedded_at: datetime
    run_id: str
    # The exact text embedded: sinks that can compare it (MongoDB) write only if it is unchanged.
    text: str = ""
