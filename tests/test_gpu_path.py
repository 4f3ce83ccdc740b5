"""The GPU path's contracts that a CPU can check (issue 20).

- Every mask handed to SDPA has ``stride(-1) == 1``: CUDA's fused kernels refuse any other
  layout ("No available kernel") while the CPU accepts it, so only a spy sees the bug here.
- Host work is off the critical path: the next batch is tokenized while the current one runs.
- FlexAttention with the bias as a score_mod equals eager fp32.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from pipeline.config import ModelConfig
from pipeline.engine.local import LocalExecutor, LocalOptions
from pipeline.model import model_cache
from pipeline.model.embedder import InstructorEmbedder
from pipeline.model.overlap import overlapped
from pipeline.model.tokens import TokenCounter
from pipeline.records import Batch
from tests.synthetic_model import TINY

_SENTENCE = (
    "the guest explained how they priced the first batch of candles and why the winter market "
    "paid for the whole year while the host kept asking about suppliers shipping and taxes"
)
_WORDS = _SENTENCE.split(" ")


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
    aligned = [t for t, n in zip(texts, counts, strict=True) if n % 16 == 0]
    unaligned = [t for t, n in zip(texts, counts, strict=True) if n % 16 != 0]
    assert aligned and unaligned, "the sample must hold both kinds of length"
    seen = _spy_sdpa(monkeypatch)
    for batch in ([aligned[0]], [aligned[0]] * 3, [unaligned[0]], texts[:7], texts):
        out = emb.embed(batch)
        assert not out.failed
    assert seen, "the fused path must go through scaled_dot_product_attention"
    bad = [(shape, stride) for shape, stride in seen if stride[-1] != 1]
    assert not bad, f"masks CUDA's fused kernels refuse (shape, stride): {bad[:3]}"


def _batches(texts: list[str], size: int) -> list[Batch]:
    out = []
    for n, i in enumerate(range(0, len(texts), size)):
        part = texts[i : i + size]
        ids = [f"c{n}-{j}" for j in range(len(part))]
        out.append(Batch(f"b{n}", ids, part, [1] * len(part), len(part)))
    return out


def test_next_batch_is_tokenized_while_the_current_one_runs(
    tiny_model_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_cache.clear()
    cfg = _cfg(tiny_model_dir)
    batches = _batches(_texts(12, seed=5), 4)
    expected = (
        InstructorEmbedder(cfg).embed([t for b in batches for t in b.texts]).vectors
    )  # one synchronous call: the reference vectors
    executor = LocalExecutor(LocalOptions(), cfg)
    model = executor.embedder.model
    second_tokenized = threading.Event()
    marker = batches[1].texts[0].strip()
    real_preprocess, real_forward = model.preprocess, model.forward

    def spy_preprocess(inputs: Any, *args: Any, **kw: Any) -> Any:
        if marker in list(inputs):
            second_tokenized.set()
        return real_preprocess(inputs, *args, **kw)

    overlapped_forward: list[bool] = []

    def slow_forward(features: Any, *args: Any, **kw: Any) -> Any:
        if not overlapped_forward:
            # The slow fake encoder: batch 0's forward pass holds until batch 1 is tokenized.
            # Sequential code never tokenizes batch 1 here, so the wait runs out (False).
            overlapped_forward.append(second_tokenized.wait(timeout=30))
        return real_forward(features, *args, **kw)

    monkeypatch.setattr(model, "preprocess", spy_preprocess)
    monkeypatch.setattr(model, "forward", slow_forward)
    try:
        results = list(executor.embed(iter(batches)))
    finally:
        model_cache.clear()
    assert overlapped_forward == [True], "batch 1 was not tokenized during batch 0's forward pass"
    assert [r.batch_id for r in results] == [b.batch_id for b in batches]
    assert all(not r.error and not r.failed and r.compute_s > 0 for r in results)
    got = np.concatenate([r.vectors for r in results])
    assert np.abs(got - expected).max() <= 1e-5


def test_overlap_hands_back_results_while_the_reader_waits_for_them() -> None:
    # A reader that needs the first result before it yields the next batch (a window that
    # waits for the writer) must not deadlock: finished results go out while it waits.
    first_result_seen = threading.Event()

    def items() -> Any:
        yield 1
        assert first_result_seen.wait(timeout=30), "the first result was held back"
        yield 2

    results = []
    for r in overlapped(items(), lambda x: x * 10, lambda x, p: p + 1, lambda x, lt: lt, lambda x: -x):
        results.append(r)
        first_result_seen.set()
    assert results == [11, 21]


def test_overlap_falls_back_per_item_and_reraises_a_broken_reader() -> None:
    def prepare(x: int) -> int:
        if x == 2:
            raise RuntimeError("tokenizer crashed")
        return x

    def launch(x: int, p: int) -> int:
        if x == 3:
            raise RuntimeError("CUDA out of memory")
        return p

    got = list(overlapped([1, 2, 3, 4], prepare, launch, lambda x, lt: lt, lambda x: -x))
    assert got == [1, -2, -3, 4]

    def broken() -> Any:
        yield 1
        raise OSError("source went away")

    with pytest.raises(OSError, match="source went away"):
        list(overlapped(broken(), lambda x: x, lambda x, p: p, lambda x, lt: lt, lambda x: -x))


def test_overlap_defers_reading_back_only_where_launch_queues() -> None:
    events: list[str] = []
    second_queued = threading.Event()

    def items() -> Any:
        yield 1
        yield 2
        second_queued.set()  # asked for a third item: item 2 is prepared and queued

    def launch(x: int, p: int) -> int:
        if x == 1:
            assert second_queued.wait(timeout=30)
        events.append(f"launch {x}")
        return p

    def finish(x: int, lt: int) -> int:
        events.append(f"finish {x}")
        return lt

    list(overlapped(items(), lambda x: x, launch, finish, lambda x: -x, defer_finish=True))
    assert events == ["launch 1", "launch 2", "finish 1", "finish 2"]
    events.clear()
    second_queued.clear()
    list(overlapped(items(), lambda x: x, launch, finish, lambda x: -x, defer_finish=False))
    assert events == ["launch 1", "finish 1", "launch 2", "finish 2"]


@pytest.mark.parametrize(("attention", "kernel"), [("fused", "sdpa"), ("eager", "eager")])
def test_gpu_check_reports_what_ran(tiny_model_dir: str, attention: str, kernel: str) -> None:
    from pipeline.model.gpu_check import format_report, run_check

    model_cache.clear()
    check = run_check(_cfg(tiny_model_dir, attention=attention), token_budget=2048, repeats=2)
    assert check.device == "cpu" and check.precision
    assert check.attention_kernel.startswith(kernel), check.attention_kernel
    assert check.batch_rows > 1 and check.batch_tokens > 0
    assert check.tokens_per_second > 0 and check.tflops > 0
    # MFU against the A10G's ~70 TFLOP/s, not the A10's 125.
    assert check.mfu_vs_a10g == pytest.approx(check.tflops * 1e12 / 70e12)
    assert 0 < check.suggested_tokens_per_second <= check.tokens_per_second
    text = format_report(check)
    assert f"tokens_per_second = {check.suggested_tokens_per_second}" in text
    assert "A10G" in text and check.attention_kernel in text


def test_flex_in_a_compiled_layer_runs_outside_the_graph(tiny_model_dir: str) -> None:
    """``flex`` + ``model.compile``: the layer graphs end at the attention call (the kernel is
    compiled on its own), and the vectors still equal eager fp32."""
    import torch

    from pipeline.model import encoder_shapes

    graphs: list[str] = []

    def recording_backend(gm: Any, example_inputs: Any) -> Any:
        graphs.append(gm.code)
        return gm.forward

    torch._dynamo.reset()
    model_cache.clear()
    try:
        emb = InstructorEmbedder(_cfg(tiny_model_dir, attention="flex"))
        encoder_shapes.install(emb.model, 16, compile=True, backend=recording_backend)
        ref = InstructorEmbedder(_cfg(tiny_model_dir, attention="eager"))
        texts = _texts(9, seed=11)
        for batch in (texts[:4], texts[4:], texts[3:4]):
            got = emb.embed(batch).vectors
            assert np.abs(got - ref.embed(batch).vectors).max() <= 1e-5
    finally:
        torch._dynamo.reset()
        model_cache.clear()  # the cached flex model carries compiled layers
    assert graphs, "the layers were not compiled"
    assert not any("flex_attention" in code for code in graphs), "FlexAttention traced into a layer graph"


def test_modal_gpu_check_is_one_gpu_function_with_a_writable_weights_volume() -> None:
    import jobs.modal_app as modal_app

    spec = modal_app.app._local_state.functions["gpu_check"]._spec  # private: fine in a test
    assert modal_app.OPTIONS.gpu in str(spec.gpus)
    # Writable (not .read_only(), as the Embedder mounts it): the check saves the compile cache.
    assert spec.volumes[modal_app.HF_HOME]._read_only is False


def test_a_small_run_does_not_compile(tiny_model_dir: str) -> None:
    """``model.compile`` applies only to runs of at least ``model.compile_min_chunks``."""
    from pipeline.model import compile_cache, encoder_shapes

    assert compile_cache.decide(True, None) and not compile_cache.decide(False, 10**9)
    assert not compile_cache.decide(True, 99, 100) and compile_cache.decide(True, 100, 100)
    cfg = _cfg(tiny_model_dir, compile=True, compile_min_chunks=100)
    model_cache.clear()
    try:
        small = LocalExecutor(LocalOptions(), cfg)
        small.expect(40)  # a per-episode ingest
        assert small.embedder.cfg.compile is False
        assert encoder_shapes.installed(small.embedder.model) is None
        big = LocalExecutor(LocalOptions(), cfg)
        big.expect(5000)  # a backfill
        shapes = encoder_shapes.installed(big.embedder.model)
        assert big.embedder.cfg.compile is True and shapes is not None and shapes.compiled
    finally:
        model_cache.clear()  # the cached model carries layers marked for compile
