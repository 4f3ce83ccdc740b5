"""Split-and-retry, the rule both executors share (pipeline/engine/split_retry.py)."""

from __future__ import annotations

import numpy as np

from pipeline.engine.split_retry import embed_with_split_retry, halves
from pipeline.records import Batch, BatchResult

DIM = 4


def _batch(n: int, batch_id: str = "b") -> Batch:
    ids = [f"c{i}" for i in range(n)]
    return Batch(batch_id, ids, [f"text {i}" for i in range(n)], [3] * n, 3 * n)


def _embedder(fails):
    calls: list[str] = []

    def embed_once(batch: Batch) -> BatchResult:
        calls.append(batch.batch_id)
        vectors = np.array([[float(cid[1:])] * DIM for cid in batch.chunk_ids], dtype=np.float32)
        error = fails(batch)
        if error:
            vectors = np.zeros((len(batch.chunk_ids), DIM), np.float32)
        return BatchResult(batch.batch_id, batch.chunk_ids, vectors, error=error, compute_s=1.0)

    return embed_once, calls


def test_halves_cover_every_row_once() -> None:
    assert halves("b", range(5)) == [("b/0", [0, 1, 2]), ("b/1", [3, 4])]
    assert halves("b", [7]) == [("b/0", [7])]


def test_a_flaky_batch_is_recovered_by_its_halves() -> None:
    embed_once, calls = _embedder(lambda b: "OOM" if b.batch_id == "b" else None)
    result = embed_with_split_retry(_batch(5), embed_once, DIM)
    assert calls == ["b", "b/0", "b/1"] and not result.failed and result.error is None
    assert result.vectors[:, 0].tolist() == [0, 1, 2, 3, 4]  # rows back in the batch's order
    assert result.compute_s == 3.0  # failed attempts are device time too


def test_a_poison_text_takes_only_its_half_down_with_both_reasons() -> None:
    embed_once, _ = _embedder(lambda b: "tokenizer crashed" if "c4" in b.chunk_ids else None)
    result = embed_with_split_retry(_batch(6), embed_once, DIM, where="local: ")
    assert set(result.failed) == {"c3", "c4", "c5"}
    assert result.failed["c4"] == (
        "local: batch failed (tokenizer crashed) and again after splitting it in halves (tokenizer crashed)"
    )
    assert result.vectors[:3, 0].tolist() == [0, 1, 2]


def test_a_single_text_batch_is_retried_once_as_it_is() -> None:
    embed_once, calls = _embedder(lambda b: "boom")
    result = embed_with_split_retry(_batch(1), embed_once, DIM)
    assert calls == ["b", "b/0"] and "c0" in result.failed
