"""GPU throughput of podembed's embedder on a model shaped like hkunlp/instructor-xl.

Builds a T5 XL encoder (24 layers, d_model 2048, d_ff 5120, 32 heads, gated GELU; mean
pooling; Dense 2048 -> 768; Normalize) with random weights directly on the GPU
(``tests.synthetic_model.build_in_memory``), then runs podembed's own code path on it:
``TokenCounter`` -> ``make_batches`` (token budget, longest first) ->
``InstructorEmbedder.embed`` per batch (INSTRUCTOR prompt handling, vectors back on the
host). Speed does not depend on the weights' values.

It measures, in the same process:

- the GPU's matmul peak (8192^3 bf16, fp32 strict, fp32 with TF32);
- bf16 for several token budgets, fp32 strict and fp32+TF32: tokens/s, chunks/s, padding,
  peak GPU memory, and model FLOPs utilisation (MFU: FLOPs of the real tokens / time /
  peak) and hardware FLOPs utilisation (HFU: FLOPs incl. padding);
- an "encoder only" bf16 pass (pre-tokenized tensors on the GPU, no host work) to show
  how much the host side (tokenizing, pooling, copying vectors back) costs;

then estimates chunks/s per A10G and the cost of 100k chunks from the measured MFU.

    python benchmarks/gpu_throughput.py                 # on a CUDA machine (< 5 min)
    python benchmarks/gpu_throughput.py --tiny          # CPU smoke test, tiny shape (~1 min)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    INSTRUCTION,
    batch_flops,
    load_make_sample,
    machine,
    median,
    table,
    write_json,
)

# Vendor datasheet peaks (dense, no sparsity), FLOP/s.
DATASHEET = {
    "H200": {"bf16": 989e12, "tf32": 494e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "tf32": 494e12, "fp32": 67e12},
    "A10G": {"bf16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
}
A10G_PEAK_BF16 = 125e12  # per NVIDIA's A10 spec as the brief states it (dense bf16 tensor)
A10G_HBM = 600e9
A10G_USD_PER_H = 1.10


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- peak


def gpu_matmul_peak(dtype: Any, n: int = 8192, reps: int = 20, tf32: bool = False) -> float:
    """FLOP/s of back-to-back n^3 matmuls timed with CUDA events (after 3 warm-ups)."""
    import torch

    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        c = torch.empty(n, n, device="cuda", dtype=dtype)
        for _ in range(3):
            torch.matmul(a, b, out=c)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            torch.matmul(a, b, out=c)
        end.record()
        torch.cuda.synchronize()
        s = start.elapsed_time(end) / 1000.0
        del a, b, c
        torch.cuda.empty_cache()
        return 2.0 * n**3 * reps / s
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def cpu_matmul_peak(n: int = 1024) -> float:
    import torch
    from common import matmul_rate

    return matmul_rate(n, torch.float32, "cpu", reps=3)


# --------------------------------------------------------------------------- model


def build_model(shape: Any, device: str, dtype: Any, tokenizer_dir: str) -> Any:
    """The INSTRUCTOR-layout model with random weights, built where it runs."""
    from tests import synthetic_model as sm

    try:
        return sm.build_in_memory(shape, device, dtype, seed=0, tokenizer_dir=tokenizer_dir)
    except ImportError as exc:
        # Older sentence-transformers (e.g. 6.0 on the GPU image) may lack the new module path.
        import sentence_transformers.models as legacy

        log(f"build_in_memory: {exc!r}; retrying with sentence_transformers.models")
        sys.modules["sentence_transformers.sentence_transformer.modules"] = legacy
        return sm.build_in_memory(shape, device, dtype, seed=0, tokenizer_dir=tokenizer_dir)


def make_embedder(model: Any, location: str, precision: str, device: str, max_seq: int) -> Any:
    """podembed's InstructorEmbedder around ``model`` (put in the model cache under its key)."""
    from pipeline import model_cache
    from pipeline.config import ModelConfig
    from pipeline.embedder import InstructorEmbedder

    cfg = ModelConfig(
        id="synthetic/instructor-xl-shape",
        dimension=(
            getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        )(),
        path=location,
        instruction=INSTRUCTION,
        max_seq_length=max_seq,
        precision=precision,  # type: ignore[arg-type]
        device=device,
    )
    cfg.validate("model")
    model.max_seq_length = max_seq
    model.set_pooling_include_prompt(False)
    model_cache.clear()
    key = (str(Path(location).resolve()), max_seq, device, precision)
    model_cache.cached(key, lambda: model)
    emb = InstructorEmbedder(cfg, device=device)
    assert emb.model is model, "embedder did not take the cached model"
    return emb, cfg


# --------------------------------------------------------------------------- runs


def texts_like_sample(n: int) -> list[str]:
    """``n`` chunks from the sample generator (same 10-400 word spread as the sample corpus)."""
    ms = load_make_sample()
    out: list[str] = []
    for batch in ms.make_large(n):
        out.extend(batch.column("text").to_pylist())
    return out


def run_embedder(
    embedder: Any, batches: list[Any], sync: Any, spec: dict[str, int], peak: float, label: str
) -> dict[str, Any]:
    """Embed every batch through InstructorEmbedder; one timed pass after a warm-up."""
    import torch

    # Warm-up: the longest and the shortest batch (kernels, allocator, cuBLAS handles).
    for b in (batches[0], batches[-1]):
        embedder.embed(b.texts)
    sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    per_batch: list[float] = []
    retries = 0
    t0 = time.perf_counter()
    for b in batches:
        tb = time.perf_counter()
        out = embedder.embed(b.texts)
        per_batch.append(time.perf_counter() - tb)
        retries += out.fp32_retries
        if out.failed:
            raise RuntimeError(f"{label}: {len(out.failed)} bad vectors")
    sync()
    wall = time.perf_counter() - t0
    lengths = [b.token_counts for b in batches]
    useful, executed = batch_flops(lengths, spec)
    real = sum(sum(x) for x in lengths)
    padded = sum(len(x) * max(x) for x in lengths)
    chunks = sum(len(x) for x in lengths)
    row = {
        "run": label,
        "batches": len(batches),
        "chunks": chunks,
        "wall_s": wall,
        "tokens_per_s": real / wall,
        "chunks_per_s": chunks / wall,
        "padding": padded / real,
        "useful_tflops": useful / wall / 1e12,
        "mfu": useful / wall / peak,
        "hfu": executed / wall / peak,
        "peak_gib": (torch.cuda.max_memory_allocated() / 2**30) if torch.cuda.is_available() else None,
        "batch_s_median": median(per_batch),
        "batch_s_max": max(per_batch),
        "fp32_retries": retries,
    }
    return row


def encoder_only(model: Any, batches: list[Any], device: str, sync: Any, spec: dict, peak: float) -> dict:
    """The T5 encoder's forward alone over pre-tokenized, pre-placed batches (no host work)."""
    import torch

    enc = model[0].auto_model
    tok = model.tokenizer
    feats = []
    for b in batches:
        f = tok(
            [INSTRUCTION + t for t in b.texts],
            padding=True,
            truncation=True,
            max_length=model.max_seq_length,
            return_tensors="pt",
        )
        feats.append((f["input_ids"].to(device), f["attention_mask"].to(device)))
    with torch.inference_mode():
        for ids, mask in (feats[0], feats[-1]):
            enc(input_ids=ids, attention_mask=mask)
        sync()
        t0 = time.perf_counter()
        for ids, mask in feats:
            enc(input_ids=ids, attention_mask=mask)
        sync()
        wall = time.perf_counter() - t0
    lengths = [b.token_counts for b in batches]
    useful, executed = batch_flops(lengths, spec)
    real = sum(sum(x) for x in lengths)
    return {
        "run": "bf16 encoder only",
        "batches": len(batches),
        "chunks": sum(len(x) for x in lengths),
        "wall_s": wall,
        "tokens_per_s": real / wall,
        "chunks_per_s": sum(len(x) for x in lengths) / wall,
        "padding": sum(len(x) * max(x) for x in lengths) / real,
        "useful_tflops": useful / wall / 1e12,
        "mfu": useful / wall / peak,
        "hfu": executed / wall / peak,
    }


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny T5 shape on CPU: a smoke test")
    p.add_argument("--n-texts", type=int, default=None, help="chunks (default 2000; 200 with --tiny)")
    p.add_argument(
        "--budgets",
        type=int,
        nargs="+",
        default=None,
        help="bf16 token budgets (padded tokens per batch); default 16384 32768 65536",
    )
    p.add_argument("--max-batch-size", type=int, default=256)
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument(
        "--fp32-texts",
        type=int,
        default=1000,
        help="chunks for the fp32 runs (strict and TF32); 0 skips them",
    )
    p.add_argument("--skip-encoder-only", action="store_true")
    p.add_argument(
        "--attn",
        default=None,
        choices=["sdpa", "eager"],
        help="transformers attention implementation of the T5 encoder (default: its own choice, sdpa)",
    )
    p.add_argument("--json", default=None, help="also write the JSON here (e.g. $OUT/gpu.json)")
    args = p.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t_start = time.perf_counter()
    import torch

    from pipeline.batching import Item, make_batches
    from pipeline.tokens import TokenCounter
    from tests import synthetic_model as sm

    cuda = torch.cuda.is_available() and not args.tiny
    device = "cuda" if cuda else "cpu"
    shape = sm.TINY if args.tiny else sm.INSTRUCTOR_XL
    n_texts = args.n_texts or (200 if args.tiny else 2000)
    budgets = args.budgets or ([4096, 8192] if args.tiny else [16384, 32768, 65536])
    main_budget = 65536 if 65536 in budgets else budgets[-1]
    if not cuda and not args.tiny:
        log("no CUDA GPU: the XL shape on CPU would take hours; use --tiny for a smoke test")
        return 2
    gpu_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    log(f"device {gpu_name}; torch {torch.__version__}; shape {shape}")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    # ---- peaks
    peaks: dict[str, float] = {}
    if cuda:
        peaks["bf16"] = gpu_matmul_peak(torch.bfloat16)
        peaks["fp32"] = gpu_matmul_peak(torch.float32)
        peaks["tf32"] = gpu_matmul_peak(torch.float32, tf32=True)
    else:
        peaks["fp32"] = peaks["bf16"] = peaks["tf32"] = cpu_matmul_peak()
    log("matmul peaks (TFLOP/s): " + ", ".join(f"{k} {v / 1e12:.1f}" for k, v in peaks.items()))

    # ---- texts and model
    texts = [t.strip() for t in texts_like_sample(n_texts)]
    words = sorted(len(t.split()) for t in texts)
    log(f"{len(texts)} texts, words min/median/max {words[0]}/{words[len(words) // 2]}/{words[-1]}")
    tmp = tempfile.mkdtemp(prefix="podembed-gpu-bench-")
    t = time.perf_counter()
    first_dtype = torch.bfloat16 if cuda else torch.float32
    model = build_model(shape, device, first_dtype, tmp)
    if args.attn:
        enc = model[0].auto_model
        setter = getattr(enc, "set_attn_implementation", None)
        if callable(setter):
            setter(args.attn)
        else:
            enc.config._attn_implementation = args.attn
    attn_impl = getattr(model[0].auto_model.config, "_attn_implementation", None)
    sync()
    build_s = time.perf_counter() - t
    head_in, head_out = shape.d_model, shape.out_dim
    spec = {
        "layers": shape.num_layers,
        "d_model": shape.d_model,
        "inner": shape.num_heads * shape.d_kv,
        "d_ff": shape.d_ff,
        "ff_mats": 3 if shape.feed_forward_proj.startswith("gated") else 2,
        "head_flops_per_seq": 2 * head_in * head_out,
    }
    log(
        f"model built in {build_s:.1f} s ({shape.encoder_parameters() / 1e9:.3f} B encoder params, "
        f"attention {attn_impl})"
    )

    rows: list[dict[str, Any]] = []
    batch_plans: dict[str, Any] = {}

    def plan(emb_cfg: Any, subset: list[str], budget: int) -> list[Any]:
        counts = TokenCounter(emb_cfg, model.tokenizer).count(subset)  # the model's own tokenizer
        items = [Item(f"c{i:06d}", s, c.tokens) for i, (s, c) in enumerate(zip(subset, counts, strict=True))]
        return make_batches(items, budget, args.max_batch_size, f"b{budget}")

    # ---- bf16 (GPU) across budgets
    precisions = ["bf16"] if cuda else ["fp32"]
    for precision in precisions:
        emb, cfg = make_embedder(model, tmp, precision, device, args.max_seq_length)
        for budget in budgets:
            batches = plan(cfg, texts, budget)
            batch_plans[f"{precision}/{budget}"] = batches
            row = run_embedder(emb, batches, sync, spec, peaks[precision], f"{precision} budget {budget}")
            row["budget"] = budget
            rows.append(row)
            log(
                f"{row['run']}: {row['tokens_per_s']:,.0f} tok/s, {row['chunks_per_s']:.1f} chunks/s, "
                f"MFU {row['mfu']:.3f}, pad {row['padding']:.3f}, peak mem {row['peak_gib']}"
            )

    enc_row = None
    if not args.skip_encoder_only:
        key = f"{precisions[0]}/{main_budget}"
        enc_row = encoder_only(model, batch_plans[key], device, sync, spec, peaks[precisions[0]])
        enc_row["budget"] = main_budget
        if not cuda:
            enc_row["run"] = "fp32 encoder only"
        rows.append(enc_row)
        log(f"{enc_row['run']}: {enc_row['tokens_per_s']:,.0f} tok/s, MFU {enc_row['mfu']:.3f}")

    # ---- fp32 strict and fp32 + TF32 (GPU), on a subset
    if cuda and args.fp32_texts > 0:
        model.to(torch.float32)
        sync()
        subset = texts[: args.fp32_texts]
        emb, cfg = make_embedder(model, tmp, "fp32", device, args.max_seq_length)
        batches = plan(cfg, subset, main_budget)
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            label = "fp32+tf32" if tf32 else "fp32"
            row = run_embedder(
                emb, batches, sync, spec, peaks["tf32" if tf32 else "fp32"], f"{label} budget {main_budget}"
            )
            row["budget"] = main_budget
            rows.append(row)
            log(f"{row['run']}: {row['tokens_per_s']:,.0f} tok/s, MFU {row['mfu']:.3f}")
        torch.backends.cuda.matmul.allow_tf32 = False

    # ---- estimates
    main_row = next(r for r in rows if r["run"] == f"{precisions[0]} budget {main_budget}")
    lengths = [b.token_counts for b in batch_plans[f"{precisions[0]}/{main_budget}"]]
    useful_total, executed_total = batch_flops(lengths, spec)
    chunks_total = sum(len(x) for x in lengths)
    per_chunk_useful = useful_total / chunks_total
    tokens_per_chunk = sum(sum(x) for x in lengths) / chunks_total
    sheet = next((v for k, v in DATASHEET.items() if k in gpu_name.upper()), None)
    achieved = main_row["useful_tflops"] * 1e12
    mfu_sheet = achieved / sheet["bf16"] if (cuda and sheet) else None
    estimate: dict[str, Any] = {}
    if mfu_sheet is not None:
        a10g_flops = mfu_sheet * A10G_PEAK_BF16
        cps = a10g_flops / per_chunk_useful
        hours = 100_000 / cps / 3600
        estimate = {
            "basis": f"bf16, token budget {main_budget}, measured on {gpu_name}",
            "mfu_vs_datasheet": mfu_sheet,
            "mfu_vs_measured_peak": main_row["mfu"],
            "a10g_peak_bf16_tflops": A10G_PEAK_BF16 / 1e12,
            "a10g_sustained_tflops": a10g_flops / 1e12,
            "useful_gflop_per_chunk": per_chunk_useful / 1e9,
            "tokens_per_chunk": tokens_per_chunk,
            "a10g_chunks_per_s": cps,
            "a10g_tokens_per_s": cps * tokens_per_chunk,
            "ten_a10g_chunks_per_s": 10 * cps,
            "a10g_hours_per_100k": hours,
            "usd_per_100k": hours * A10G_USD_PER_H,
            "wall_min_100k_on_10": hours * 60 / 10,
            "weight_read_s_per_batch_a10g": 2 * shape.encoder_parameters() / A10G_HBM,
            "compute_s_per_batch_a10g": executed_total / len(lengths) / a10g_flops,
            "assumptions": [
                "the A10G reaches the same fraction of its datasheet bf16 peak (125 TFLOP/s dense) "
                "as measured here against this GPU's datasheet peak; a smaller GPU usually does no "
                "worse (host overhead per batch is a smaller share of longer batches), but A10Gs "
                "run power-capped at lower sustained clocks, so treat it as +-30%",
                "compute-bound: each batch reads the 2.4 GB of bf16 weights once (~4 ms at 600 GB/s) "
                "against seconds of matmuls, so the 600 GB/s memory is not the limit",
                f"the same length mix: {tokens_per_chunk:.0f} tokens per chunk incl. the instruction "
                "(sample-corpus generator, 10-400 words, T5-style tokenizer trained offline)",
                f"the token budget {main_budget} fits in 24 GB (peak measured here: "
                f"{main_row['peak_gib']:.1f} GiB with 2.4 GB of bf16 weights)"
                if main_row.get("peak_gib")
                else "",
                "GPU-seconds only: container start (13.6 s cold in the seed system), model load and "
                "idle scale-down time are extra",
                f"${A10G_USD_PER_H}/h per A10G",
            ],
        }
        log(f"A10G estimate: {cps:.1f} chunks/s, ${estimate['usd_per_100k']:.3f} per 100k chunks")

    total_s = time.perf_counter() - t_start
    cols = [
        "run",
        "batches",
        "chunks",
        "wall_s",
        "tokens_per_s",
        "chunks_per_s",
        "padding",
        "useful_tflops",
        "mfu",
        "hfu",
        "peak_gib",
    ]
    print()
    print(
        table(
            rows,
            cols,
            title=f"podembed embedder on {gpu_name}, {shape.num_layers}x{shape.d_model} T5 "
            f"(MFU = FLOPs of real tokens / time / measured matmul peak of that precision)",
        )
    )
    print(
        "matmul peaks measured here (TFLOP/s): " + ", ".join(f"{k} {v / 1e12:.1f}" for k, v in peaks.items())
    )
    if estimate:
        print(
            table(
                [{k: v for k, v in estimate.items() if k not in ("assumptions", "basis")}],
                title=f"A10G estimate ({estimate['basis']})",
            )
        )
        for a in estimate["assumptions"]:
            if a:
                print(f"  - {a}")
    print(f"total {total_s:.1f} s (model build {build_s:.1f} s)")

    result = {
        "benchmark": "gpu_throughput",
        "machine": machine(),
        "device": gpu_name,
        "shape": dataclasses.asdict(shape),
        "encoder_parameters": shape.encoder_parameters(),
        "n_texts": len(texts),
        "max_seq_length": args.max_seq_length,
        "peaks_flops": peaks,
        "datasheet_flops": sheet,
        "rows": rows,
        "a10g_estimate": estimate,
        "model_build_s": build_s,
        "attn_implementation": attn_impl,
        "total_s": total_s,
        "tiny": args.tiny,
    }
    name = "gpu_throughput_tiny" if args.tiny else "gpu_throughput"
    path = write_json(name, result)
    if args.json:
        write_json(name, result, args.json)
    print(f"wrote {path}" + (f" and {args.json}" if args.json else ""))
    with contextlib.suppress(OSError):
        import shutil

        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
