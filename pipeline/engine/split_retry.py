"""Split-and-retry: the one rule for a batch that fails as a whole, for every executor.

A batch that fails entirely (out of memory, a tokenizer crash, a container that died or
timed out) is retried once, in halves: a flaky failure costs one retry, and a poison text
takes only its own half down. The chunks of a half that fails again are dead-lettered
with both reasons. A one-text batch is retried once as it is.

The in-process executor applies it synchronously (:func:`embed_with_split_retry`); the
Modal fan-out sends the halves of every failed batch in a second ``.map()`` pass, with
the same :func:`halves` and :func:`dead_letter_reason`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from pipeline.records import Batch, BatchResult

log = logging.getLogger(__name__)


def halves(part_id: str, rows: Sequence[int]) -> list[tuple[str, list[int]]]:
    """The retry parts of a failed part: ``(id, rows)`` for each half (one part if one row)."""
    rows = list(rows)
    if len(rows) <= 1:
        return [(f"{part_id}/0", rows)]
    mid = (len(rows) + 1) // 2
    return [(f"{part_id}/0", rows[:mid]), (f"{part_id}/1", rows[mid:])]


def dead_letter_reason(first: str, second: str, where: str = "") -> str:
    """Why the chunks of a half that failed twice are dead-lettered (both failures)."""
    return f"{where}batch failed ({first}) and again after splitting it in halves ({second})"[:1000]


def sub_batch(batch: Batch, part_id: str, rows: Sequence[int]) -> Batch:
    """The rows ``rows`` of ``batch`` as a batch of their own."""
    return Batch(
        batch_id=part_id,
        chunk_ids=[batch.chunk_ids[r] for r in rows],
        texts=[batch.texts[r] for r in rows],
        token_counts=[batch.token_counts[r] for r in rows],
        padded_tokens=len(rows) * max((batch.token_counts[r] for r in rows), default=0),
    )


def embed_with_split_retry(
    batch: Batch, embed_once: Callable[[Batch], BatchResult], dim: int, where: str = ""
) -> BatchResult:
    """``embed_once(batch)``; if the whole batch fails (``error`` set), its halves once.

    The result covers the whole batch: vectors of what worked, ``failed`` for the rest,
    and the time of every attempt (failed ones are device time too).
    """
    first = embed_once(batch)
    if not first.error:
        return first
    log.warning("batch %s failed (%s); retrying it in halves", batch.batch_id, first.error)
    vectors = np.zeros((len(batch.chunk_ids), dim), dtype=np.float32)
    failed: dict[str, str] = {}
    compute_s, load_s, fp32_retries = first.compute_s, first.load_s, first.fp32_retries
    for part_id, rows in halves(batch.batch_id, range(len(batch.chunk_ids))):
        half = embed_once(sub_batch(batch, part_id, rows))
        compute_s += half.compute_s
        load_s += half.load_s
        fp32_retries += half.fp32_retries
        if half.error:
            reason = dead_letter_reason(first.error, half.error, where)
            failed.update(dict.fromkeys(half.chunk_ids, reason))
            continue
        vectors[rows] = half.vectors
        failed.update(half.failed)
    return BatchResult(
        batch_id=batch.batch_id,
        chunk_ids=batch.chunk_ids,
        vectors=vectors,
        failed=failed,
        compute_s=compute_s,
        load_s=load_s,
        fp32_retries=fp32_retries,
    )
