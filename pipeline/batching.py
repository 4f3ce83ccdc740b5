"""Cutting a window of chunks into batches: sorted by length, bounded by a token budget.

Padding is the waste in batched transformer inference: a batch costs
``batch_size x longest`` tokens of compute. Sorting a whole window (thousands of
chunks) by token length before cutting keeps batches uniform; a budget of padded
tokens (not a fixed count) keeps memory flat from the longest batch to the shortest;
longest batches go first so an out-of-memory shows at once, not at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.records import Batch


@dataclass(slots=True, frozen=True)
class Item:
    """One text to embed with its token count."""

    chunk_id: str
    text: str
    tokens: int


def make_batches(
    items: Sequence[Item],
    token_budget: int,
    max_batch_size: int,
    id_prefix: str,
) -> list[Batch]:
    """Sort ``items`` longest first and cut them into batches of at most ``token_budget``
    padded tokens (``len(batch) * longest``) and ``max_batch_size`` texts.

    A single text longer than the budget still gets a batch of its own.
    """
    ordered = sorted(items, key=lambda it: (-it.tokens, it.chunk_id))
    batches: list[Batch] = []
    current: list[Item] = []
    longest = 0

    def flush() -> None:
        if current:
            batches.append(
                Batch(
                    batch_id=f"{id_prefix}/b{len(batches):05d}",
                    chunk_ids=[it.chunk_id for it in current],
                    texts=[it.text for it in current],
                    token_counts=[it.tokens for it in current],
                    padded_tokens=len(current) * longest,
                )
            )

    for item in ordered:
        width = max(longest, item.tokens)
        if current and ((len(current) + 1) * width > token_budget or len(current) >= max_batch_size):
            flush()
            current, longest = [], 0
            width = item.tokens
        current.append(item)
        longest = width
    flush()
    return batches


def padding_ratio(padded_tokens: int, real_tokens: int) -> float:
    """Padded over real tokens: 1.0 means no padding at all."""
    return padded_tokens / real_tokens if real_tokens else 1.0
