"""Where the instructor-xl-shaped encoder spends its GPU time (evidence for the MFU figure).

Builds the same random-weight model as ``gpu_throughput.py`` (bf16 on the GPU), cuts the
same 2,000 sample-like chunks into token-budget batches, and profiles the T5 encoder's
forward over a few of them with ``torch.profiler``: kernel time grouped into matmuls
(GEMM), attention, normalisation, and other element-wise work, plus the top kernels.

    python benchmarks/gpu_profile.py            # on a CUDA machine (~1 min): the whole 65536-budget plan
    python benchmarks/gpu_profile.py --tiny     # CPU smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import INSTRUCTION, batch_flops, machine, table, write_json
from gpu_throughput import build_model, texts_like_sample

GROUPS = [
    ("gemm (aten::mm/bmm)", ("gemm", "cutlass", "xmma", "addmm", "aten::mm", "aten::bmm", "matmul", "nvjet")),
    ("attention kernels", ("attention", "fmha", "flash", "softmax", "sdpa", "scaled_dot")),
    ("casts and copies", ("copy", "_to_copy", "contiguous", "clone")),
    ("norm (T5 RMSNorm in fp32)", ("pow", "mean", "rsqrt", "layer_norm", "norm")),
]


def group_of(name: str) -> str:
    low = name.lower()
    for g, keys in GROUPS:
        if any(k in low for k in keys):
            return g
    return "other element-wise (mul, add, where, tanh...)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--budget", type=int, default=65536)
    p.add_argument(
        "--batches", type=int, default=0, help="batches profiled from the middle of the plan (0: all)"
    )
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from torch.profiler import ProfilerActivity, profile

    from pipeline.config import ModelConfig
    from pipeline.engine.batching import Item, make_batches
    from pipeline.model.tokens import TokenCounter
    from tests import synthetic_model as sm

    cuda = torch.cuda.is_available() and not args.tiny
    device = "cuda" if cuda else "cpu"
    shape = sm.TINY if args.tiny else sm.INSTRUCTOR_XL
    tmp = tempfile.mkdtemp(prefix="podembed-gpu-prof-")
    model = build_model(shape, device, torch.bfloat16 if cuda else torch.float32, tmp)
    model.set_pooling_include_prompt(False)
    texts = [t.strip() for t in texts_like_sample(200 if args.tiny else 2000)]
    cfg = ModelConfig(id="x", dimension=shape.out_dim, path=tmp, instruction=INSTRUCTION, max_seq_length=512)
    counts = TokenCounter(cfg, model.tokenizer).count(texts)
    items = [Item(f"c{i:05d}", t, c.tokens) for i, (t, c) in enumerate(zip(texts, counts, strict=True))]
    plan = make_batches(items, args.budget, 256, "p")
    mid = len(plan) // 2
    chosen = (
        plan
        if args.batches <= 0
        else plan[max(0, mid - args.batches // 2) : max(0, mid - args.batches // 2) + args.batches]
    )
    enc = model[0].auto_model
    feats = []
    for b in chosen:
        f = model.tokenizer(
            [INSTRUCTION + t for t in b.texts],
            padding=True,
            truncation=True,
            max_length=512,
            return_tensors="pt",
        )
        feats.append((f["input_ids"].to(device), f["attention_mask"].to(device)))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.inference_mode():
        for ids, mask in feats[:2]:
            enc(input_ids=ids, attention_mask=mask)
        sync()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        t = time.perf_counter()
        with profile(activities=acts) as prof:
            for ids, mask in feats:
                enc(input_ids=ids, attention_mask=mask)
            sync()
        wall = time.perf_counter() - t
    spec = {
        "layers": shape.num_layers,
        "d_model": shape.d_model,
        "inner": shape.num_heads * shape.d_kv,
        "d_ff": shape.d_ff,
        "ff_mats": 3,
    }
    useful, executed = batch_flops([b.token_counts for b in chosen], spec)
    events = prof.key_averages()

    def dev_us(e: Any) -> float:
        return float(getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0) or 0)

    if cuda:
        from torch.autograd import DeviceType

        # Each kernel is attributed to the innermost op that launched it: group by op (no double count).
        ops = [
            (e.key, dev_us(e), e.count) for e in events if e.device_type == DeviceType.CPU and dev_us(e) > 0
        ]
        kern = [
            (e.key, dev_us(e), e.count) for e in events if e.device_type == DeviceType.CUDA and dev_us(e) > 0
        ]
    else:
        ops = kern = [(e.key, e.self_cpu_time_total, e.count) for e in events if e.self_cpu_time_total > 0]
    total = sum(k[1] for k in kern)
    op_total = sum(k[1] for k in ops)
    groups: dict[str, float] = {}
    for name, us, _ in ops:
        groups[group_of(name)] = groups.get(group_of(name), 0.0) + us
    group_rows = [
        {"group": g, "share": v / op_total, "ms": v / 1000}
        for g, v in sorted(groups.items(), key=lambda x: -x[1])
    ]
    op_rows = [
        {"op": n[:60], "share": us / op_total, "ms": us / 1000, "calls": c}
        for n, us, c in sorted(ops, key=lambda k: -k[1])[:15]
    ]
    top_rows = [
        {"kernel": n[:100], "share": us / total, "ms": us / 1000, "calls": c}
        for n, us, c in sorted(kern, key=lambda k: -k[1])[:25]
    ]
    dims = [f"{len(b.texts)}x{max(b.token_counts)}" for b in chosen]
    print(
        table(
            group_rows,
            ["group", "share", "ms"],
            title=(
                f"{'GPU kernel' if cuda else 'CPU op'} time over {len(chosen)} encoder forwards "
                f"({', '.join(dims)}), wall {wall:.3f} s, executed {executed / 1e12:.1f} TFLOP -> "
                f"{executed / wall / 1e12:.1f} TFLOP/s"
            ),
        )
    )
    print(table(op_rows, ["op", "share", "ms", "calls"], title="device time by the op that launched it"))
    print(
        table(
            top_rows,
            ["kernel", "share", "ms", "calls"],
            title=f"top kernels (all kernels: {total / 1000:.1f} ms)",
        )
    )
    result = {
        "benchmark": "gpu_profile",
        "machine": machine(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "budget": args.budget,
        "batches": dims,
        "wall_s": wall,
        "flops_executed": executed,
        "flops_useful": useful,
        "kernel_ms": total / 1000,
        "groups": group_rows,
        "ops": op_rows,
        "top": top_rows,
        "tiny": args.tiny,
    }
    name = "gpu_profile_tiny" if args.tiny else "gpu_profile"
    write_json(name, result)
    if args.json:
        write_json(name, result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
