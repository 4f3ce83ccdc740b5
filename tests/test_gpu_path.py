"""The GPU path's contracts that a CPU can check (issue 20).

- Every mask handed to SDPA has ``stride(-1) == 1``: CUDA's fused kernels refuse any other
  layout ("No available kernel") while the CPU accepts it, so only a spy sees the bug here.
- Host work is off the critical path: the next batch is tokenized while the current one runs.
- FlexAttention with the bias as a score_mod equals eager fp32.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from pipeline import model_cache
from pipeline.config import ModelConfig
from pipeline.embedder import InstructorEmbedder
from pipeline.tokens import TokenCounter
from tests.synthetic_model import TINY

_WORDS = (
    "the guest explained how they priced the first batch of candles and why the winter market "
    "paid for the whole year while the host kept asking about suppliers shipping and taxes"
).split()


def _cfg(path: str, **kw: Any) -> ModelConfig:
    base = ModelConfig(
        id="tiny-gpu-path", path=path, dimension=TINY.out_dim, max_seq_length=128, device="cpu"
    )
    return replace(base, **kw)


def _texts(n: int, seed: int = 3, most: int = 60) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(_WORDS, size=int(rng.integers(1, most)))) + "." for _ in range(n)]


def _spy_sdpa(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    import torch

    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q: Any, k: Any, v: Any, attn_mask: Any = None, *args: Any, **kw: Any) -> Any:
        if attn_mask is not None:
            seen.append((tuple(attn_mask.shape), tuple(attn_mask.stride())))
        return real(q, k, v, attn_mask, *args, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return seen


@pytest.mark.parametrize("seq_multiple", [0, 16])
def test_every_sdpa_mask_has_a_unit_last_stride(
    tiny_model_dir: str, monkeypatch: pytest.MonkeyPatch, seq_multiple: int
) -> None:
    model_cache.clear()
    emb = InstructorEmbedder(_cfg(tiny_model_dir, attention="fused", seq_multiple=seq_multiple))
    counter = TokenCounter(emb.cfg, emb.tokenizer)
    texts = _texts(40)
    counts = [c.tokens for c in counter.count(texts)]
    # Unpadded batches (one text, or texts of one length) at lengths that are and are not a
    # multiple of the kernel's alignment, and padded batches of mixed lengths.
    aligned = [t for t, n in zip(texts, counts) if n % 16 == 0]
    unaligned = [t for t, n in zip(texts, counts) if n % 16 != 0]
    assert aligned and unaligned, "the sample must hold both kinds of length"
    seen = _spy_sdpa(monkeypatch)
    for batch in ([aligned[0]], [aligned[0]] * 3, [unaligned[0]], texts[:7], texts):
        out = emb.embed(batch)
        assert not out.failed
    assert seen, "the fused path must go through scaled_dot_product_attention"
    bad = [(shape, stride) for shape, stride in seen if stride[-1] != 1]
    assert not bad, f"masks CUDA's fused kernels refuse (shape, stride): {bad[:3]}"
