"""Time per query of `podembed search`, the model already loaded.

1. **Sample corpus**: the README's first command must have run (``podembed backfill``,
   vectors in ``data/out``), or pass ``--config`` for another backfilled target. Ten
   questions, each searched ``--reps`` times through :class:`pipeline.reporting.search.Searcher`
   (the code under the CLI): embedding the question, the exact search, reading the
   snippets from the source; each part timed.
2. **100k vectors**: ``--n`` random unit 384-dim float32 vectors written through the real
   ``ParquetSink`` (``--per-episode`` chunks per episode file), then the sink's exact
   search timed for random queries: all vectors, and one episode (``--episode``). Random
   vectors are fine for timing; the search does the same work whatever they hold.

Wall times on a shared machine grow with its load (recorded in the results); the
``cpu`` columns (process CPU time per query, all threads) move much less.

    python benchmarks/search_speed.py                 # ~1-2 min (writing 100k vectors dominates)
    python benchmarks/search_speed.py --n 20000 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, median, table, write_json

QUESTIONS_FILE = ROOT / "data" / "sample_questions.json"


def _ms(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"median_ms": 1000 * median(xs), "p90_ms": 1000 * xs[min(len(xs) - 1, int(0.9 * len(xs)))]}


def bench_sample(config_path: str, reps: int) -> dict[str, Any]:
    """Per-query times on a backfilled config (default: the sample in data/out), and retrieval."""
    from pipeline.config import load_config
    from pipeline.reporting.search import Searcher
    from tests.helpers import Question, retrieval_check

    config = load_config(config_path)
    questions = [Question(**q) for q in json.loads(QUESTIONS_FILE.read_text())["questions"]]
    start = time.perf_counter()
    searcher = Searcher(config)
    open_s = time.perf_counter() - start
    try:
        start = time.perf_counter()
        searcher.embedder  # noqa: B018 - load the model (not part of a query)
        load_s = time.perf_counter() - start
        searcher.search(questions[0].question, 10)  # warm-up: first forward pass, file caches
        parts: dict[str, list[float]] = {"total": [], "embed": [], "search": [], "fetch": [], "cpu": []}
        for _ in range(reps):
            for q in questions:
                cpu = time.process_time()
                searcher.search(q.question, 10)
                parts["cpu"].append(time.process_time() - cpu)
                s = searcher.stats
                parts["total"].append(s.total_s)
                parts["embed"].append(s.embed_s)
                parts["search"].append(s.search_s)
                parts["fetch"].append(s.fetch_s)
        scanned = searcher.stats.scanned
        retrieval = {
            "query_instruction": retrieval_check(searcher, questions),
            "no_instruction": retrieval_check(searcher, questions, instruction=""),
            "document_instruction": retrieval_check(
                searcher, questions, instruction=config.model.instruction
            ),
        }
    finally:
        searcher.close()
    return {
        "config": config_path,
        "vectors": scanned,
        "queries": len(parts["total"]),
        "open_s": open_s,
        "model_load_s": load_s,
        **{f"{k}_{m}": v for k, xs in parts.items() for m, v in _ms(xs).items()},
        "retrieval_top5": retrieval,
    }


def write_synthetic(out: Path, n: int, dim: int, per_episode: int) -> tuple[float, str]:
    """``n`` random unit vectors in a Parquet sink; returns (seconds, fingerprint)."""
    import numpy as np

    from pipeline.files.sink import ParquetSink, ParquetSinkOptions
    from pipeline.records import VectorRecord

    fingerprint = "synthetic/0123456789abcdef0123"
    rng = np.random.default_rng(0)
    sink = ParquetSink(ParquetSinkOptions(str(out)), dim)
    now = datetime.now(UTC)
    start = time.perf_counter()
    try:
        for e, first in enumerate(range(0, n, per_episode)):
            count = min(per_episode, n - first)
            vecs = rng.standard_normal((count, dim)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            episode = f"ep{e:05d}"
            sink.write(
                [
                    VectorRecord(
                        f"{episode}-c{i:04d}", episode, vecs[i], "0" * 64, fingerprint, "i", now, "bench"
                    )
                    for i in range(count)
                ]
            )
    finally:
        sink.close()
    return time.perf_counter() - start, fingerprint


def bench_synthetic(n: int, dim: int, per_episode: int, reps: int) -> dict[str, Any]:
    """Per-query time of the Parquet sink's exact search over ``n`` vectors."""
    import numpy as np

    from pipeline.config import FieldMap
    from pipeline.files.sink import ParquetSink, ParquetSinkOptions
    from pipeline.interfaces.sink import VectorQuery

    with tempfile.TemporaryDirectory(prefix="podembed-search-") as tmp:
        out = Path(tmp) / "out"
        write_s, fingerprint = write_synthetic(out, n, dim, per_episode)
        files = len(list((out / "vectors").glob("*.parquet")))
        sink = ParquetSink(ParquetSinkOptions(str(out)), dim)
        rng = np.random.default_rng(1)
        try:
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            times: dict[str, list[float]] = {"all": [], "all_cpu": [], "one_episode": []}
            for rep in range(reps + 1):  # the first round warms the page cache
                q = rng.standard_normal(dim).astype(np.float32)
                for name, episodes in (("all", ()), ("one_episode", ("ep00042",))):
                    query = VectorQuery(
                        q, 10, fingerprint, FieldMap(), episode_ids=episodes, unit_vectors=True
                    )
                    start, cpu = time.perf_counter(), time.process_time()
                    outcome = sink.search(query)
                    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
                    if rep:
                        times[name].append(elapsed)
                        if name == "all":
                            times["all_cpu"].append(cpu)
                    if name == "all":
                        assert outcome.scanned == n, outcome.scanned
            rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        finally:
            sink.close()
    return {
        "vectors": n,
        "dimension": dim,
        "files": files,
        "write_s": write_s,
        **{f"{k}_{m}": v for k, xs in times.items() for m, v in _ms(xs).items()},
        "peak_rss_growth_mb": (rss_after - rss_before) / 1024,
    }


def main() -> None:
    """Run both parts, print tables, write benchmarks/results/search_speed.json."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "local.toml"))
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--per-episode", type=int, default=100)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-sample", action="store_true")
    args = ap.parse_args()
    # The machines are shared: record how busy this one was (2 cores: 2.0 is full).
    result: dict[str, Any] = {"machine": machine(), "load_average_start": os.getloadavg()}
    if not args.skip_sample:
        result["sample"] = bench_sample(args.config, args.reps)
        retrieval = result["sample"].pop("retrieval_top5")
        print(table([result["sample"]], title="sample corpus (per query, model loaded)"))
        print(
            table([{"query embedded with": k, **v} for k, v in retrieval.items()], title="retrieval, top 5")
        )
        result["sample"]["retrieval_top5"] = retrieval
    result["synthetic"] = bench_synthetic(args.n, args.dim, args.per_episode, args.reps)
    print(table([result["synthetic"]], title=f"{args.n:,} random vectors, Parquet sink exact search"))
    result["load_average_end"] = os.getloadavg()
    print("load average (1, 5, 15 min):", result["load_average_start"], "->", result["load_average_end"])
    print("written to", write_json("search_speed", result))


if __name__ == "__main__":
    main()
