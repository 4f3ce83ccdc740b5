"""Batching: sorted longest first, bounded by a padded-token budget, every item exactly once."""

from __future__ import annotations

import random

from pipeline.engine.batching import Item, make_batches
from pipeline.reporting.cost import padding_ratio


def _items(n: int, seed: int = 1) -> list[Item]:
    rng = random.Random(seed)
    return [Item(f"c{i}", "t", rng.randint(5, 512)) for i in range(n)]


def test_budget_sorting_and_coverage() -> None:
    items = _items(3000)
    batches = make_batches(items, token_budget=16384, max_batch_size=128, id_prefix="s")
    seen = [cid for b in batches for cid in b.chunk_ids]
    assert sorted(seen) == sorted(it.chunk_id for it in items)
    for b in batches:
        assert b.padded_tokens == len(b.chunk_ids) * max(b.token_counts) <= 16384
        assert len(b.chunk_ids) <= 128
        assert b.token_counts == sorted(b.token_counts, reverse=True)
    # Longest batch first: an out-of-memory shows at once.
    assert max(batches[0].token_counts) == max(it.tokens for it in items)
    firsts = [max(b.token_counts) for b in batches]
    assert firsts == sorted(firsts, reverse=True)
    ratio = padding_ratio(sum(b.padded_tokens for b in batches), sum(it.tokens for it in items))
    assert 1.0 <= ratio < 1.05, ratio


def test_sorted_window_pads_far_less_than_arrival_order() -> None:
    items = _items(2000, seed=3)
    sorted_pad = sum(b.padded_tokens for b in make_batches(items, 10**9, 64, "s"))
    arrival = sum(64 * max(it.tokens for it in items[i : i + 64]) for i in range(0, len(items), 64))
    assert arrival / sorted_pad > 1.5


def test_a_text_longer_than_the_budget_gets_its_own_batch() -> None:
    batches = make_batches([Item("big", "t", 600), Item("small", "t", 10)], 500, 8, "s")
    assert [b.chunk_ids for b in batches] == [["big"], ["small"]]
    assert batches[0].batch_id != batches[1].batch_id
