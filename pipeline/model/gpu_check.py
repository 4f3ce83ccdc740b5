"""An operator's pre-flight on the real GPU: one batch, and what it says about speed and cost.

``modal run jobs/modal_app.py::gpu_check`` calls :func:`run_check` in one GPU container;
it works the same anywhere (``python -c "from pipeline.model.gpu_check import main; main()"``
on a machine with a GPU, or on a CPU with a small model, as the tests do).

It embeds one real-sized batch (the configured token budget of podcast-like chunks)
through podembed's own embed path (tokenize on a worker thread, forward, vectors back to
the host), warm first (so kernel set-up and any compile are not timed), then reports:
the GPU, driver, CUDA and torch versions, the precision, the attention kernel the
profiler saw run, tokens/s, and MFU against the A10G's ~70 TFLOP/s dense bf16 peak (an
estimate of the A10G's real peak: see docs/gpu.md), and the ``[cost] tokens_per_second``
to configure.
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.config import ModelConfig

log = logging.getLogger(__name__)

#: The A10G's dense bf16 tensor peak, FLOP/s: a published measurement gives 69.5 TFLOP/s for a
#: 10240^3 bf16 matmul (the A10's datasheet 125 TFLOP/s does not apply). An estimate: replace
#: MFU figures derived from it with a gpu_check run on a real A10G.
A10G_BF16_PEAK = 70e12

#: A chunk like the podcast sample's median (~134 words, ~180 tokens with the instruction).
_CHUNK = (
    "so when we started the shop we had no idea how much the shipping would cost us and the "
    "first winter we sold almost nothing online but the market stall paid for everything, and "
    "that is when my partner said we should stop guessing and actually write down what every "
    "candle costs us, the wax, the wicks, the jars, the labels, the time it takes to pour and "
    "to cure, and once we had that spreadsheet it was obvious that the small jars were losing "
    "money on every sale while the big ones carried the whole business through the year"
)


@dataclass(slots=True)
class GpuCheck:
    """What one pre-flight measured."""

    device: str
    gpu: str
    driver: str
    cuda: str
    torch: str
    transformers: str
    sentence_transformers: str
    precision: str
    attention_config: str
    attention_kernel: str
    compiled: bool
    compile_cache_loaded: bool
    batch_rows: int
    batch_tokens: int
    repeats: int
    warmup_s: float
    wall_s: float
    tokens_per_second: float
    chunks_per_second: float
    tflops: float
    mfu_vs_a10g: float
    suggested_tokens_per_second: int
    kernels: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A plain dict (JSON)."""
        return asdict(self)


def sample_texts(rows: int) -> list[str]:
    """``rows`` podcast-like chunks of one typical length (each a little different)."""
    return [f"{_CHUNK} ({i})" for i in range(rows)]


def matmul_flops_per_token(model: Any, length: int) -> float:
    """Matmul FLOPs per token of a T5 or BERT-like encoder at sequence ``length``.

    Projections and feed-forward ``2 * layers * (4 * d_model * inner + ff_mats * d_model *
    d_ff)`` plus attention ``4 * layers * inner * length`` (as benchmarks/common.py counts).
    """
    from pipeline.model.encoder_shapes import encoder_of

    cfg = encoder_of(model).config
    if hasattr(cfg, "d_ff"):  # T5
        layers, d_model, inner, d_ff = cfg.num_layers, cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff
        ff_mats = 3 if str(cfg.feed_forward_proj).startswith("gated") else 2
    else:
        layers, d_model, inner = cfg.num_hidden_layers, cfg.hidden_size, cfg.hidden_size
        d_ff, ff_mats = cfg.intermediate_size, 2
    return 2.0 * layers * (4 * d_model * inner + ff_mats * d_model * d_ff) + 4.0 * layers * inner * length


def attention_kernel(names: list[str]) -> str:
    """Which attention ran, from the profiler's kernel/op names."""
    text = " ".join(names).lower()
    if "flex_attention" in text or "triton_tem_fused" in text:
        return "flex (FlexAttention, Triton)"
    if "flash" in text and "cpu" not in text:
        return "sdpa flash"
    if "efficient_attention" in text or "fmha_cutlass" in text or "memeffattention" in text:
        return "sdpa memory-efficient (bias as mask)"
    if "cudnn" in text and "attention" in text:
        return "sdpa cudnn"
    if "scaled_dot_product" in text:
        return "sdpa (cpu)" if "cpu" in text else "sdpa math (fp32 fallback)"
    if "softmax" in text:
        return "eager (matmul + softmax)"
    return "unknown"


def _versions() -> dict[str, str]:
    import sentence_transformers
    import torch
    import transformers

    driver = "none"
    if torch.cuda.is_available():
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            driver = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "?"
        except (OSError, subprocess.SubprocessError):
            driver = "? (no nvidia-smi)"
    return {
        "driver": driver,
        "cuda": str(torch.version.cuda or "none"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
    }


def _profile_kernels(embedder: Any, texts: list[str]) -> tuple[str, dict[str, float]]:
    """Run one batch under the profiler: the attention kernel's name and time per kernel group."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = embedder.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        embedder.embed(texts)
        if cuda:
            torch.cuda.synchronize()
    names: list[str] = []
    groups: dict[str, float] = {}
    for event in prof.key_averages():
        names.append(event.key)
        if cuda and str(getattr(event, "device_type", "")).endswith("CUDA"):
            seconds = float(getattr(event, "self_device_time_total", 0) or 0) / 1e6
            groups[event.key[:80]] = groups.get(event.key[:80], 0.0) + seconds
    top = dict(sorted(groups.items(), key=lambda kv: -kv[1])[:8])
    return attention_kernel(names), top


def run_check(
    cfg: ModelConfig,
    token_budget: int = 65536,
    max_batch_size: int = 256,
    repeats: int = 5,
    device: str | None = None,
    texts: list[str] | None = None,
) -> GpuCheck:
    """Embed one batch of ``token_budget`` tokens ``repeats`` times (after a warm pass)."""
    import torch

    from pipeline.model.embedder import InstructorEmbedder
    from pipeline.model.overlap import overlapped
    from pipeline.model.tokens import TokenCounter

    embedder = InstructorEmbedder(cfg, device=device)
    counter = TokenCounter(cfg, embedder.tokenizer)
    if texts is None:
        per_text = counter.count(sample_texts(1))[0].tokens
        texts = sample_texts(max(1, min(max_batch_size, token_budget // max(1, per_text))))
    counts = [c.tokens for c in counter.count([t.strip() for t in texts])]
    cuda = embedder.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    start = time.perf_counter()
    embedder.embed(texts)  # warm: kernels, allocator, any compile
    sync()
    warmup_s = time.perf_counter() - start

    def finish(item: int, launched: Any) -> Any:
        out = embedder.finish(launched)
        if out.failed:
            raise RuntimeError(f"gpu_check: {len(out.failed)} bad vectors: {next(iter(out.failed.values()))}")
        return out

    def fallback(item: int) -> Any:
        raise RuntimeError("gpu_check: the batch failed on the overlapped path")

    start = time.perf_counter()
    for _ in overlapped(
        range(repeats),
        lambda i: embedder.prepare(texts),
        lambda i, prepared: embedder.launch(prepared),
        finish,
        fallback,
        defer_finish=cuda,
    ):
        pass
    sync()
    wall = time.perf_counter() - start
    kernel, groups = _profile_kernels(embedder, texts)
    tokens = sum(counts) * repeats
    flops = sum(n * matmul_flops_per_token(embedder.model, n) for n in counts) * repeats
    tokens_per_s = tokens / wall
    versions = _versions()
    return GpuCheck(
        device=embedder.device,
        gpu=torch.cuda.get_device_name() if cuda else "none (cpu)",
        precision=embedder.precision.describe(),
        attention_config=cfg.attention,
        attention_kernel=kernel,
        compiled=cfg.compile,
        compile_cache_loaded=bool(getattr(embedder, "compile_cache_loaded", False)),
        batch_rows=len(texts),
        batch_tokens=sum(counts),
        repeats=repeats,
        warmup_s=warmup_s,
        wall_s=wall,
        tokens_per_second=tokens_per_s,
        chunks_per_second=len(texts) * repeats / wall,
        tflops=flops / wall / 1e12,
        mfu_vs_a10g=flops / wall / A10G_BF16_PEAK,
        # Two significant figures, rounded down: a planning number, not a promise.
        suggested_tokens_per_second=_round_down(tokens_per_s),
        kernels=groups,
        **versions,
    )


def _round_down(value: float) -> int:
    if value < 10:
        return max(1, int(value))
    digits = len(str(int(value))) - 2
    step = 10**digits
    return int(value // step * step)


def format_report(check: GpuCheck) -> str:
    """The operator's summary, ending with the line to paste into ``[cost]``."""
    mfu_note = (
        "the A10G's ~70 TFLOP/s is an estimate: on an A10G this is its MFU"
        if "A10" in check.gpu
        else "against the A10G's ~70 TFLOP/s (an estimate); this is not an A10G"
    )
    lines = [
        f"GPU:            {check.gpu} (driver {check.driver}, CUDA {check.cuda})",
        f"software:       torch {check.torch}, transformers {check.transformers}, "
        f"sentence-transformers {check.sentence_transformers}",
        f"precision:      {check.precision}",
        f"attention:      model.attention = {check.attention_config!r}; "
        f"kernel that ran: {check.attention_kernel}",
        f"compile:        {'on' if check.compiled else 'off'}"
        + (
            f" (cache {'loaded' if check.compile_cache_loaded else 'not found: compiled afresh'})"
            if check.compiled
            else ""
        ),
        f"batch:          {check.batch_rows} chunks, {check.batch_tokens} tokens, "
        f"{check.repeats} timed passes (warm-up {check.warmup_s:.1f} s)",
        f"speed:          {check.tokens_per_second:,.0f} tokens/s, {check.chunks_per_second:,.1f} chunks/s, "
        f"{check.tflops:.1f} TFLOP/s",
        f"MFU vs A10G:    {check.mfu_vs_a10g:.3f} ({mfu_note})",
        "",
        "Put this measurement in your config (one GPU of this type):",
        "  [cost]",
        f'  device = "{check.gpu}"',
        f"  tokens_per_second = {check.suggested_tokens_per_second}",
    ]
    return "\n".join(lines)


def main() -> None:
    """``python -m pipeline.model.gpu_check CONFIG.toml``: the pre-flight without Modal."""
    import sys

    from pipeline.config import load_config

    config = load_config(sys.argv[1] if len(sys.argv) > 1 else "configs/production.toml")
    check = run_check(config.model, config.batching.token_budget, config.batching.max_batch_size)
    print(format_report(check))


if __name__ == "__main__":
    main()
