"""Peak memory of a podembed backfill on 10k and on 100k chunks: the pipeline's memory stays flat.

Builds a tiny random T5 model with the INSTRUCTOR layout (``tests.synthetic_model.TINY``,
0.35 M parameters) so the run is fast and the figure is the pipeline's own memory, not the
model's. Generates the corpora with ``data/make_sample.py``'s ``make_large`` (the sample's
10-400 word spread), streamed into Parquet with ``ParquetWriter`` (row groups of 2,000),
then runs ``pipeline.engine.runner.run`` Parquet -> Parquet with ``configs/local.toml``'s batching
in a fresh subprocess per size. The child reports ``getrusage(RUSAGE_SELF).ru_maxrss``
after loading the model (baseline) and after the run (peak); the parent also samples the
child's ``VmRSS`` from ``/proc`` every 0.2 s.

Target: the 100k run's peak within +10% of the 10k run's.

    python benchmarks/memory_scaling.py                        # 10k and 100k (~4 min)
    python benchmarks/memory_scaling.py --sizes 2000 10000     # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, load_make_sample, machine, table, write_json


def write_corpus(n: int, path: Path, row_group: int) -> Path:
    """``n`` synthetic chunks, streamed to Parquet one row group at a time."""
    import pyarrow.parquet as pq

    ms = load_make_sample()
    with pq.ParquetWriter(path, ms.SCHEMA, compression="zstd") as writer:
        for batch in ms.make_large(n, batch_rows=row_group):
            writer.write_batch(batch, row_group_size=row_group)
    return path


def config(source: Path, out: Path, model: Path, max_seq: int) -> Any:
    """``configs/local.toml`` pointed at the tiny model and the benchmark's files."""
    from pipeline.config import parse_config
    from tests import synthetic_model as sm

    raw = tomllib.loads((ROOT / "configs" / "local.toml").read_text())
    raw["source"]["path"] = str(source)
    raw["sink"]["path"] = str(out)
    raw["report"]["dir"] = str(out / "runs")
    raw["model"] = {
        "id": "synthetic/tiny-t5",
        "path": str(model),
        "dimension": sm.TINY.out_dim,
        "max_seq_length": max_seq,
        "precision": "fp32",
        "device": "cpu",
    }
    return parse_config(raw)


def rss_kib() -> int:
    """Peak RSS of this process so far, KiB (Linux reports ru_maxrss in KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def child(args: argparse.Namespace) -> int:
    """One run in this fresh process; prints a JSON line with the figures."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    from pipeline.engine.options import RunOptions
    from pipeline.engine.runner import run
    from pipeline.model.embedder import InstructorEmbedder

    cfg = config(Path(args.source), Path(args.out), Path(args.model), args.max_seq)
    InstructorEmbedder(cfg.model)  # load the model first: its memory is the baseline
    base = rss_kib()
    load_s = time.perf_counter() - t0
    t = time.perf_counter()
    report = run(cfg, RunOptions())
    wall = time.perf_counter() - t
    print(
        json.dumps(
            {
                "status": report.status,
                "error": report.error,
                "embedded": report.counts.embedded,
                "seen": report.counts.seen,
                "shards": report.shards_total,
                "batches": report.batches,
                "tokens": report.tokens,
                "padding": report.padding_ratio,
                "baseline_kib": base,
                "peak_kib": rss_kib(),
                "load_s": load_s,
                "wall_s": wall,
                "chunks_per_s": report.counts.embedded / wall if wall else 0.0,
            }
        ),
        flush=True,
    )
    return 0 if report.status == "completed" else 1


def sample_child(proc: subprocess.Popen[str], every: float = 0.2) -> tuple[int, list[tuple[float, int]]]:
    """Poll ``VmRSS`` of ``proc`` until it exits; (max KiB, timeline)."""
    status = Path(f"/proc/{proc.pid}/status")
    peak, timeline, t0 = 0, [], time.perf_counter()
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kib = int(line.split()[1])
                    peak = max(peak, kib)
                    timeline.append((round(time.perf_counter() - t0, 1), kib))
                    break
        except (OSError, ValueError):
            pass
        time.sleep(every)
    return peak, timeline


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument(
        "--max-seq",
        type=int,
        default=32,
        help="max_seq_length of the tiny model (small: the model's compute is not the point)",
    )
    p.add_argument("--row-group", type=int, default=2000)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)

    from tests import synthetic_model as sm

    tmp = Path(tempfile.mkdtemp(prefix="podembed-bench-mem-"))
    t = time.perf_counter()
    model = sm.build_model(tmp / "tiny-model", sm.TINY)
    print(f"tiny model built in {time.perf_counter() - t:.1f} s", flush=True)
    rows: list[dict[str, Any]] = []
    timelines: dict[str, Any] = {}
    for n in args.sizes:
        t = time.perf_counter()
        src = write_corpus(n, tmp / f"corpus-{n}.parquet", args.row_group)
        gen_s = time.perf_counter() - t
        out = tmp / f"out-{n}"
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--source",
            str(src),
            "--out",
            str(out),
            "--model",
            str(model),
            "--max-seq",
            str(args.max_seq),
        ]
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        sampled, timeline = sample_child(proc)
        stdout, stderr = proc.communicate()
        total = time.perf_counter() - t
        if proc.returncode != 0:
            print(stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"child for {n} chunks failed ({proc.returncode})")
        r = json.loads(stdout.strip().splitlines()[-1])
        row = {
            "chunks": n,
            "embedded": r["embedded"],
            "shards": r["shards"],
            "batches": r["batches"],
            "baseline_mib": r["baseline_kib"] / 1024,
            "peak_mib": r["peak_kib"] / 1024,
            "pipeline_mib": (r["peak_kib"] - r["baseline_kib"]) / 1024,
            "sampled_peak_mib": sampled / 1024,
            "run_s": r["wall_s"],
            "chunks_per_s": r["chunks_per_s"],
            "process_s": total,
            "corpus_mib": src.stat().st_size / 2**20,
            "gen_s": gen_s,
        }
        rows.append(row)
        timelines[str(n)] = timeline[:: max(1, len(timeline) // 200)]
        print(
            f"{n} chunks: peak {row['peak_mib']:.0f} MiB (baseline {row['baseline_mib']:.0f}), "
            f"{row['run_s']:.1f} s",
            flush=True,
        )
        shutil.rmtree(out, ignore_errors=True)
        src.unlink()

    ratio = rows[-1]["peak_mib"] / rows[0]["peak_mib"]
    growth = rows[-1]["pipeline_mib"] / max(rows[0]["pipeline_mib"], 1e-9)
    print()
    print(
        table(
            rows,
            [
                "chunks",
                "embedded",
                "shards",
                "batches",
                "baseline_mib",
                "peak_mib",
                "pipeline_mib",
                "sampled_peak_mib",
                "run_s",
                "chunks_per_s",
            ],
            title=f"peak RSS per run (tiny T5, max_seq_length {args.max_seq}, local.toml batching)",
        )
    )
    print(
        f"peak {rows[-1]['chunks']:,} / {rows[0]['chunks']:,}: {ratio:.3f} (target <= 1.10); "
        f"above the loaded-model baseline: {growth:.2f}x"
    )
    path = write_json(
        "memory_scaling",
        {
            "benchmark": "memory_scaling",
            "machine": machine(),
            "max_seq_length": args.max_seq,
            "row_group": args.row_group,
            "rows": rows,
            "peak_ratio": ratio,
            "pipeline_growth": growth,
            "target_met": ratio <= 1.10,
            "timelines_s_kib": timelines,
        },
    )
    print(f"wrote {path}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
