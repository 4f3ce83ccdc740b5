"""Start-up: ``podembed --help`` (no heavy import at CLI start) and the first batch in a fresh process.

- ``podembed --help``: wall time of the installed console script in a subprocess, median of
  5, plus which heavy modules (torch, sentence_transformers, transformers, pyarrow, pymongo,
  modal) importing the CLI module pulls in (it should pull in none of them);
- first batch: a fresh Python process that does what a run does before its first vector
  with the bundled MiniLM and ``configs/local.toml``: import the pipeline, load the model
  (``InstructorEmbedder``: sentence-transformers import + weights), count tokens of the
  sample corpus, cut batches, and embed the first (longest) batch. Median of 3.

    python benchmarks/startup.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SAMPLE, machine, median, table, write_json

HEAVY = ["torch", "sentence_transformers", "transformers", "pyarrow", "pymongo", "modal", "numpy"]


def child() -> int:
    """Runs in a fresh process: the steps before a run's first vector, timed."""
    t0 = time.perf_counter()
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import pyarrow.parquet as pq

    from pipeline.config import parse_config
    from pipeline.engine.batching import Item, make_batches
    from pipeline.model.embedder import InstructorEmbedder
    from pipeline.model.tokens import TokenCounter

    t_import = time.perf_counter()
    cfg = parse_config(tomllib.loads((ROOT / "configs" / "local.toml").read_text()))
    emb = InstructorEmbedder(cfg.model)
    t_load = time.perf_counter()
    rows = pq.read_table(SAMPLE, columns=["chunk_id", "text"]).to_pylist()
    texts = [r["text"].strip() for r in rows]
    counts = TokenCounter(cfg.model, emb.tokenizer).count(texts)
    b = cfg.batching
    batches = make_batches(
        [Item(r["chunk_id"], t, c.tokens) for r, t, c in zip(rows, texts, counts, strict=True)],
        b.token_budget,
        b.max_batch_size,
        "s",
    )
    t_plan = time.perf_counter()
    out = emb.embed(batches[0].texts)
    t_first = time.perf_counter()
    print(
        json.dumps(
            {
                "import_s": t_import - t0,
                "model_load_s": t_load - t_import,
                "count_and_batch_s": t_plan - t_load,
                "first_forward_s": t_first - t_plan,
                "first_batch_size": len(batches[0].texts),
                "first_batch_padded_tokens": batches[0].padded_tokens,
                "vectors": list(out.vectors.shape),
                "in_child_s": t_first - t0,
            }
        ),
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--help-reps", type=int, default=5)
    p.add_argument("--first-reps", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child()

    exe = shutil.which("podembed") or str(Path(sys.executable).parent / "podembed")
    help_times = []
    for _ in range(args.help_reps):
        t = time.perf_counter()
        r = subprocess.run([exe, "--help"], capture_output=True, text=True, cwd=ROOT)
        help_times.append(time.perf_counter() - t)
        assert r.returncode == 0, r.stderr
    probe = (
        "import sys, time; t = time.perf_counter(); import jobs.cli; "
        f"print(time.perf_counter() - t); print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    lines = r.stdout.strip().splitlines()
    cli_import_s, heavy = float(lines[0]), [m for m in (lines[1].split(",") if len(lines) > 1 else []) if m]
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    python_s = time.perf_counter() - t
    print(
        f"podembed --help: median {median(help_times):.3f} s of {args.help_reps}; "
        f"heavy modules imported by jobs.cli: {heavy or 'none'}",
        flush=True,
    )

    firsts: list[dict[str, Any]] = []
    for i in range(args.first_reps):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, __file__, "--child"], capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t
        if r.returncode != 0:
            print(r.stderr[-3000:], file=sys.stderr)
            raise SystemExit("first-batch child failed")
        d = json.loads(r.stdout.strip().splitlines()[-1])
        d["process_wall_s"] = wall
        firsts.append(d)
        print(
            f"first batch, fresh process {i}: {wall:.2f} s (load {d['model_load_s']:.2f} s, "
            f"first forward {d['first_forward_s']:.2f} s)",
            flush=True,
        )
    keys = ["process_wall_s", "import_s", "model_load_s", "count_and_batch_s", "first_forward_s"]
    med = {k: median([f[k] for f in firsts]) for k in keys}
    rows = [
        {"step": "python -c pass", "seconds": python_s},
        {"step": "podembed --help (median)", "seconds": median(help_times)},
        {"step": "import jobs.cli", "seconds": cli_import_s},
    ]
    rows += [{"step": f"first batch: {k}", "seconds": v} for k, v in med.items()]
    print()
    print(
        table(
            rows,
            ["step", "seconds"],
            title=f"start-up (first batch = {firsts[0]['first_batch_size']} longest sample chunks, "
            f"{firsts[0]['first_batch_padded_tokens']} padded tokens, MiniLM fp32 CPU)",
        )
    )
    path = write_json(
        "startup",
        {
            "benchmark": "startup",
            "machine": machine(),
            "help_s": help_times,
            "help_median_s": median(help_times),
            "heavy_modules_at_cli_import": heavy,
            "cli_import_s": cli_import_s,
            "python_startup_s": python_s,
            "first_batch": firsts,
            "first_batch_median": med,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
