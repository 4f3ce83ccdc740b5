"""Every fast encoder path gives the eager fp32 path's vectors (issue 14).

The paths: T5 attention with the position bias in a fused SDPA mask or a FlexAttention
score_mod (``model.attention = "fused" | "flex"``), batch lengths rounded up to bounded shapes
(``model.seq_multiple``) and ``torch.compile`` over them (``model.compile``). On the CPU, in
fp32, with the tiny random T5, each must agree with transformers' eager attention to 1e-5
over texts of very different real lengths, including batches that are mostly padding.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.config import ModelConfig
from pipeline.errors import ConfigError, ModelError
from pipeline.model import encoder_shapes, model_cache, t5_attention
from pipeline.model.embedder import InstructorEmbedder
from tests.synthetic_model import TINY

_SENTENCE = (
    "the guest explained how they priced the first batch of candles and why the winter market "
    "paid for the whole year while the host kept asking about suppliers shipping and taxes"
)


def _texts() -> list[str]:
    """Real lengths from 1 word to past max_seq_length, in an order that mixes them."""
    rng = np.random.default_rng(7)
    lengths = [1, 150, 2, 45, 7, 90, 3, 20]
    return [" ".join(rng.choice(_SENTENCE.split(), size=n)) + "." for n in lengths]


def _cfg(path: str, **kw: Any) -> ModelConfig:
    base = ModelConfig(
        id="tiny-fast-paths", path=path, dimension=TINY.out_dim, max_seq_length=128, device="cpu"
    )
    return replace(base, **kw)


def _embed(emb: InstructorEmbedder, texts: list[str], batch: int) -> np.ndarray:
    # One batch of all texts is mostly padding (1 word next to 150, cut at 128 tokens).
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FlexAttention warns that it runs unfused on the CPU
        for i in range(0, len(texts), batch):
            res = emb.embed(texts[i : i + batch])
            assert not res.failed and res.fp32_retries == 0
            out.append(res.vectors)
    return np.concatenate(out)


@pytest.fixture(scope="module")
def eager(tiny_model_dir: str) -> np.ndarray:
    model_cache.clear()
    emb = InstructorEmbedder(_cfg(tiny_model_dir, attention="eager"))
    # The test only means something if the position bias is not zero.
    bias = emb.model[0].auto_model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias
    assert float(bias.weight.detach().abs().min()) > 0
    return _embed(emb, _texts(), 1)


@pytest.mark.parametrize(
    "settings",
    [
        {"attention": "fused"},
        {"attention": "flex"},
        {"attention": "sdpa", "seq_multiple": 64},
        {"attention": "fused", "seq_multiple": 32},
        {"attention": "flex", "seq_multiple": 64},
    ],
    ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()),
)
def test_fast_paths_equal_eager_fp32(tiny_model_dir: str, eager: np.ndarray, settings: dict) -> None:
    emb = InstructorEmbedder(_cfg(tiny_model_dir, **settings))
    if settings["attention"] in t5_attention.PATCHED:
        assert t5_attention.installed(emb.model) == settings["attention"]
    if settings.get("seq_multiple"):
        assert encoder_shapes.installed(emb.model) is not None
    texts = _texts()
    # Batches of one have no padding mask at all: a separate branch of the fused path.
    for batch in (len(texts), 3, 1) if settings == {"attention": "fused"} else (len(texts), 3):
        got = _embed(emb, texts, batch)
        assert np.abs(got - eager).max() <= 1e-5, (settings, batch)
    shapes = encoder_shapes.installed(emb.model)
    if shapes is not None:
        assert all(length % shapes.multiple == 0 for length in shapes.lengths)


def test_mask_storage_is_aligned_and_padding_is_hidden() -> None:
    import torch

    q = torch.zeros(3, 2, 10, 4)
    bias = torch.randn(1, 2, 10, 10)
    keep = torch.ones(3, 10, dtype=torch.bool)
    keep[1, 6:] = False
    mask = t5_attention._sdpa_mask(bias, keep[:, None, None, :], q)
    assert mask.shape == (3, 2, 10, 10) and mask.stride(-2) % t5_attention._MASK_ALIGN == 0
    assert torch.equal(mask[0], bias[0]) and torch.equal(mask[1, :, :, :6], bias[0, :, :, :6])
    assert bool((mask[1, :, :, 6:] == torch.finfo(q.dtype).min).all())
    # transformers' eager mask (additive floats) gives the same key mask.
    additive = torch.where(keep, 0.0, torch.finfo(q.dtype).min)[:, None, None, :]
    assert torch.equal(t5_attention._sdpa_mask(bias, additive, q), mask)


def test_compile_stops_compiling_after_the_first_shapes(tiny_model_dir: str) -> None:
    """Regional, dynamic compile: new lengths and batch sizes reuse the graphs already built."""
    import torch

    graphs: list[int] = []

    def counting_backend(gm: Any, example_inputs: Any) -> Any:
        graphs.append(len(gm.graph.nodes))
        return gm.forward

    torch._dynamo.reset()
    emb = InstructorEmbedder(_cfg(tiny_model_dir, attention="fused", seq_multiple=0))
    shapes = encoder_shapes.install(emb.model, 16, compile=True, backend=counting_backend)
    assert len(shapes.blocks) == TINY.num_layers
    ref = InstructorEmbedder(_cfg(tiny_model_dir, attention="eager"))
    texts = _texts()
    warm = [texts[:3], texts[2:4], texts[5:8]]
    later = [texts[:1], texts[1:6], texts, texts[3:5], texts[6:8]]
    for i, batch in enumerate(warm + later):
        if i == len(warm):
            compiled = len(graphs)
            seen = set(shapes.shapes)
        got = emb.embed(batch).vectors
        assert np.abs(got - ref.embed(batch).vectors).max() <= 1e-5
    assert all(length % 16 == 0 for length in shapes.lengths)
    assert len(shapes.shapes - seen) >= 3, "the later batches must bring new shapes"
    # Each layer's graph breaks at the attention call (t5_attention: the kernel reads the
    # aligned mask outside the graph), so a layer is two graphs: 8 for layer 0 and the rest.
    assert len(graphs) == compiled <= 8, f"recompiled for new shapes: {graphs}"
    torch._dynamo.reset()
    model_cache.clear()  # the cached fused model now carries compiled layers


def test_fast_paths_keep_the_fp32_retry(tiny_model_dir: str, tmp_path: Path) -> None:
    """A batch that overflows in reduced precision is re-run in fp32 on the same fast path."""
    import torch
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import Dense
    except ImportError:
        from sentence_transformers.models import Dense

    model = SentenceTransformer(tiny_model_dir, device="cpu")
    dense = next(m for m in model if isinstance(m, Dense))
    with torch.no_grad():
        dense.linear.weight.mul_(1e6)
    path = str(tmp_path / "overflow")
    model.save(path)
    texts = ["a short line about bread", "another line, a bit longer, about telescopes and stars"]
    plain = InstructorEmbedder(_cfg(path, attention="eager")).embed(texts).vectors
    fast = InstructorEmbedder(_cfg(path, attention="fused", seq_multiple=32, precision="fp16"))
    assert not np.isfinite(fast._encode(fast.model, texts)).all(), "the model must overflow in fp16"
    out = fast.embed(texts)
    assert out.fp32_retries == 1 and not out.failed
    assert t5_attention.installed(fast._fp32_model()) == "fused"
    assert encoder_shapes.installed(fast._fp32_model()) is not None
    assert np.abs(out.vectors - plain).max() <= 1e-5


def test_patched_attention_needs_a_t5_model() -> None:
    import torch

    with pytest.raises(ModelError, match="T5 encoders"):
        t5_attention.install(torch.nn.Sequential(torch.nn.Linear(2, 2)), "fused")


def test_config_accepts_the_fast_paths_and_bounds_seq_multiple() -> None:
    cfg = ModelConfig(id="x-t5", dimension=8, attention="flex", compile=True, seq_multiple=64)
    cfg.validate("model")
    with pytest.raises(ConfigError, match=r"model\.seq_multiple"):
        ModelConfig(id="x-t5", dimension=8, seq_multiple=1024).validate("model")
    with pytest.raises(ConfigError, match=r"model\.seq_multiple"):
        ModelConfig(id="x-t5", dimension=8, seq_multiple=-1).validate("model")
