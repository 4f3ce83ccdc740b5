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


#: A batch of at least ``PAD_CUT_MIN_ITEMS`` texts is also closed when the next (shorter)
#: text would make its padding exceed this fraction of its real tokens. A big budget on a
#: small or sparse window otherwise packs texts of very different lengths together (padding
#: 1.1-1.5x measured on 400-2,000 sample chunks, against 1.02-1.05x with the cap).
MAX_PADDING = 0.05
PAD_CUT_MIN_ITEMS = 8


def make_batches(
    items: Sequence[Item],
    token_budget: int,
    max_batch_size: int,
    id_prefix: str,
    max_padding: float | None = MAX_PADDING,
) -> list[Batch]:
    """Sort ``items`` longest first and cut them into batches of at most ``token_budget``
    padded tokens (``len(batch) * longest``) and ``max_batch_size`` texts.

    A batch already holding ``PAD_CUT_MIN_ITEMS`` texts is also cut when adding the next
    text would make its padded tokens exceed ``(1 + max_padding)`` times its real tokens
    (``None`` turns this off). A single text longer than the budget still gets a batch of
    its own.
    """
    ordered = sorted(items, key=lambda it: (-it.tokens, it.chunk_id))
    batches: list[Batch] = []
    current: list[Item] = []
    longest = 0
    real = 0

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
        padded = (len(current) + 1) * width
        too_padded = (
            max_padding is not None
            and len(current) >= PAD_CUT_MIN_ITEMS
            and padded > (real + item.tokens) * (1.0 + max_padding)
        )
        if current and (padded > token_budget or len(current) >= max_batch_size or too_padded):
            flush()
            current, longest, real = [], 0, 0
            width = item.tokens
        current.append(item)
        longest = width
        real += item.tokens
    flush()
    return batches
