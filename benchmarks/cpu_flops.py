"""How close a CPU run comes to the machine's fp32 matmul limit.

Runs ``podembed backfill`` (``pipeline.engine.runner.run``, ``configs/local.toml``, bundled MiniLM,
fresh output folder, model loaded beforehand) on a subset of the sample corpus, counts the
FLOPs the model executes from its shapes and the real token counts (per layer: the Q, K,
V, O and feed-forward matmuls, 2 FLOPs per multiply-add, plus the attention's s^2 terms;
padding included, since a padded token costs the same), and divides FLOPs per second by
the fp32 matmul rate measured here (torch matmul of large square matrices, same threads).

It also profiles one forward pass of the first batch with ``torch.profiler`` to show
where the rest of the time goes.

    python benchmarks/cpu_flops.py              # 300 chunks (~1 min)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import batch_flops, machine, matmul_rate, spec_from_hf_config, table, write_json
from pipeline_vs_bare import make_corpus, podembed_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--seq", type=int, default=256)
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import pyarrow.parquet as pq
    import torch

    from pipeline.engine.batching import Item, make_batches
    from pipeline.engine.options import RunOptions
    from pipeline.engine.runner import run
    from pipeline.model.embedder import InstructorEmbedder
    from pipeline.model.tokens import TokenCounter

    threads = torch.get_num_threads()
    rates = {n: matmul_rate(n, torch.float32, reps=3) for n in (512, 1024, 2048, 4096)}
    peak = max(rates.values())
    print(
        "fp32 matmul GFLOP/s by size: "
        + ", ".join(f"{n}: {r / 1e9:.1f}" for n, r in rates.items())
        + f" ({threads} threads)",
        flush=True,
    )

    tmp = Path(tempfile.mkdtemp(prefix="podembed-bench-flops-"))
    source = make_corpus(args.n, tmp)
    cfg = podembed_config(source, tmp / "out", args.seq)
    emb = InstructorEmbedder(cfg.model)
    model = emb.model
    spec = spec_from_hf_config(model[0].auto_model.config)
    rows_ = pq.read_table(source, columns=["chunk_id", "text"]).to_pylist()
    texts = [r["text"].strip() for r in rows_]
    counts = [c.tokens for c in TokenCounter(cfg.model, model.tokenizer).count(texts)]
    b = cfg.batching
    batches = make_batches(
        [Item(r["chunk_id"], t, c) for r, t, c in zip(rows_, texts, counts, strict=True)],
        b.token_budget,
        b.max_batch_size,
        "x",
    )
    useful, executed = batch_flops([x.token_counts for x in batches], spec)
    emb.embed(texts[:8])  # warm-up

    t = time.perf_counter()
    report = run(cfg, RunOptions())
    wall = time.perf_counter() - t
    assert report.status == "completed" and report.counts.embedded == len(rows_), report.error

    # Where does a forward pass spend its time?
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        emb.embed(batches[0].texts)
    ka = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ka)
    matmul_ops = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
    attn_ops = {
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_attention_math",
    }
    mm = sum(e.self_cpu_time_total for e in ka if e.key in matmul_ops)
    attn = sum(e.self_cpu_time_total for e in ka if e.key in attn_ops)
    top = sorted(ka, key=lambda e: -e.self_cpu_time_total)[:8]
    top_rows = [{"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count} for e in top]

    rows = [
        {
            "basis": "run wall time (read..write)",
            "seconds": wall,
            "gflop_per_s": executed / wall / 1e9,
            "fraction_of_matmul": executed / wall / peak,
            "useful_fraction": useful / wall / peak,
        },
        {
            "basis": "embed time (executor only)",
            "seconds": report.device_s,
            "gflop_per_s": executed / report.device_s / 1e9,
            "fraction_of_matmul": executed / report.device_s / peak,
            "useful_fraction": useful / report.device_s / peak,
        },
    ]
    print()
    print(
        table(
            rows,
            ["basis", "seconds", "gflop_per_s", "fraction_of_matmul", "useful_fraction"],
            title=(
                f"MiniLM-L6 fp32, {len(rows_)} chunks, seq {args.seq}: {executed / 1e9:,.0f} GFLOP executed "
                f"(padding {report.padding_ratio:.3f}); fp32 matmul peak {peak / 1e9:.1f} GFLOP/s"
            ),
        )
    )
    print(
        table(
            top_rows,
            ["op", "share", "calls"],
            title=(
                f"one forward of the first batch ({len(batches[0].texts)} x "
                f"{max(batches[0].token_counts)} tokens): "
                f"matmuls {mm / total:.0%} of CPU time, attention kernel {attn / total:.0%}"
            ),
        )
    )
    path = write_json(
        "cpu_flops",
        {
            "benchmark": "cpu_flops",
            "machine": machine(),
            "n_chunks": len(rows_),
            "max_seq_length": args.seq,
            "matmul_rates": {str(k): v for k, v in rates.items()},
            "matmul_peak": peak,
            "flops_executed": executed,
            "flops_useful": useful,
            "padding": report.padding_ratio,
            "rows": rows,
            "profile_top_ops": top_rows,
            "profile_matmul_share": mm / total,
            "profile_attention_share": attn / total,
        },
    )
    print(f"wrote {path}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
