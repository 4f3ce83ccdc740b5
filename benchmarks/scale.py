"""Catalogue scale: what a night costs at 10k → 1M chunks (Parquet), and a 10M extrapolation.

The pipeline's own cost, not the model's: batches go to a **fake fast embedder** (vectors
derived from each chunk id, 768 dimensions, no model), while tokens are still counted with
the tiny synthetic model's real tokenizer. Per size, in one fresh process:

- ``first``: the first backfill (every chunk embedded and written);
- ``noop``: a backfill with nothing changed (the metadata-only night);
- ``status``: ``podembed status`` (quick, from metadata); ``status_full``: ``status --full``;
- ``changed_1pct``: 1% of the chunks edited (rewritten in as few source files as that
  takes) and a backfill; ``full``: ``backfill --full`` (linear, reads everything);
- RSS: peak (``ru_maxrss``) after each phase; file counts in the sink folder.

The corpus is ``data/make_sample.py``'s ``make_large`` in files of ``--file-rows`` rows.

    python benchmarks/scale.py --sizes 10000 100000          # ~5 min on 2 cores
    python benchmarks/scale.py --sizes 1000000 --skip-full   # the 1M figures
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, load_make_sample, machine, table, write_json

DIM = 768


def write_corpus(n: int, folder: Path, file_rows: int) -> list[Path]:
    """``n`` synthetic chunks in files of ``file_rows`` rows (row groups of 2,000)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ms = load_make_sample()
    folder.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    writer = None
    in_file = 0
    for batch in ms.make_large(n, batch_rows=2000):
        table_ = pa.Table.from_batches([batch])
        while table_.num_rows:
            if writer is None:
                files.append(folder / f"part-{len(files):05d}.parquet")
                writer = pq.ParquetWriter(files[-1], ms.SCHEMA, compression="zstd")
                in_file = 0
            take = min(table_.num_rows, file_rows - in_file)
            writer.write_table(table_.slice(0, take), row_group_size=2000)
            table_ = table_.slice(take)
            in_file += take
            if in_file >= file_rows:
                writer.close()
                writer = None
    if writer is not None:
        writer.close()
    return files


def edit(files: list[Path], fraction: float, total: int) -> int:
    """Change the text of ``fraction`` of all chunks, in as few files as that takes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    todo = int(total * fraction)
    done = 0
    for f in files:
        if done >= todo:
            break
        t = pq.read_table(f)
        k = min(t.num_rows, todo - done)
        text = t["text"].to_pylist()
        for i in range(k):
            text[i] = text[i] + " (edited)"
        t = t.set_column(t.column_names.index("text"), "text", pa.array(text, t["text"].type))
        pq.write_table(t, f, row_group_size=2000, compression="zstd")
        done += k
    return done


class FakeEmbedder:
    """A fast stand-in executor: a vector per chunk from its id, the tokenizer of the tiny model."""

    device_label = "fake"
    remote = False

    def __init__(self, model_cfg: Any, tokenizer: Any) -> None:
        from pipeline.model.fingerprint import model_fingerprint

        self._fp = model_fingerprint(model_cfg)
        self._tok = tokenizer

    def fingerprint(self) -> str:
        return self._fp

    def tokenizer(self) -> Any:
        return self._tok

    def embed(self, batches: Iterable[Any]) -> Iterator[Any]:
        from pipeline.records import BatchResult

        for b in batches:
            seed = int.from_bytes(hashlib.blake2b(b.batch_id.encode(), digest_size=8).digest(), "little")
            v = np.random.default_rng(seed).standard_normal((len(b.chunk_ids), DIM), dtype=np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            yield BatchResult(batch_id=b.batch_id, chunk_ids=b.chunk_ids, vectors=v, compute_s=0.0)

    def expect(self, chunks: int) -> None:
        pass

    def usage(self) -> Any:
        from pipeline.reporting.cost import Usage

        return Usage(devices={}, containers=0)

    def close(self) -> None:
        pass


def _config(source: Path, out: Path, model: Path) -> Any:
    import tomllib

    from pipeline.config import parse_config

    raw = tomllib.loads((ROOT / "configs" / "local.toml").read_text())
    raw["source"]["path"] = str(source)
    raw["sink"]["path"] = str(out)
    raw["report"]["dir"] = str(out / "runs")
    raw["model"] = {
        "id": "synthetic/tiny-t5",
        "path": str(model),
        "dimension": DIM,
        "max_seq_length": 128,
        "precision": "fp32",
        "device": "cpu",
    }
    return parse_config(raw)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _files_in(folder: Path) -> int:
    return sum(len(fs) for _, _, fs in os.walk(folder))


def child(args: argparse.Namespace) -> int:
    """All phases for one size in this fresh process; one JSON line per phase."""
    from transformers import AutoTokenizer

    from pipeline.engine.options import RunOptions
    from pipeline.engine.runner import run
    from pipeline.parts import open_parts
    from pipeline.reporting.status import coverage

    source, out = Path(args.source), Path(args.out)
    cfg = _config(source, out, Path(args.model))
    ex = FakeEmbedder(cfg.model, AutoTokenizer.from_pretrained(args.model))

    def emit(phase: str, seconds: float, **extra: Any) -> None:
        doc = {"phase": phase, "s": round(seconds, 3), "rss_peak_mib": round(_rss_mib(), 1), **extra}
        doc["sink_files"] = _files_in(out)
        print(json.dumps(doc), flush=True)

    def backfill(phase: str, **opts: Any) -> None:
        t = time.perf_counter()
        r = run(cfg, RunOptions(**opts), executor=ex)  # type: ignore[arg-type]
        emit(
            phase,
            time.perf_counter() - t,
            status=r.status,
            embedded=r.counts.embedded,
            seen=r.counts.seen,
            unchanged=r.counts.unchanged,
            removed=r.counts.removed,
            sweep=r.sweep,
        )

    def status(phase: str, full: bool) -> None:
        t = time.perf_counter()
        parts = open_parts(cfg)
        try:
            cov = coverage(cfg, parts, full=full)
        finally:
            parts.close()
        emit(phase, time.perf_counter() - t, current=cov.current, total=cov.total, exact=cov.exact)

    def search_phases() -> None:
        """`podembed index`, then the median of 20 searches: exact from the matrix and indexed."""
        from contextlib import nullcontext
        from unittest import mock

        import numpy as np

        from pipeline.files.search import build_index, search
        from pipeline.interfaces.sink import VectorQuery

        parts = open_parts(cfg)
        try:
            sink = parts.sink
            t = time.perf_counter()
            outcome = build_index(sink)  # type: ignore[arg-type]
            emit("index", time.perf_counter() - t, index=outcome.status)
            fp = next(iter(sink.fingerprint_counts()))
            rng = np.random.default_rng(7)
            for label in ("search", "search_exact"):
                # search_exact hides the approximate index: the exact path over the same matrix.
                hidden = label == "search_exact"
                exact_only = mock.patch("pipeline.files.search._search_ann", return_value=None)
                times, method = [], ""
                for _ in range(20):
                    q = rng.standard_normal(768).astype(np.float32)
                    query = VectorQuery(vector=q / np.linalg.norm(q), k=10, fingerprint=fp,
                                        fields=cfg.fields, unit_vectors=True)
                    with exact_only if hidden else nullcontext():
                        t = time.perf_counter()
                        out = search(sink, query)  # type: ignore[arg-type]
                        times.append(time.perf_counter() - t)
                    method = out.method
                emit(label, float(np.median(times)), method=method)
        finally:
            parts.close()

    backfill("first")
    backfill("noop")
    search_phases()
    status("status", full=False)
    if not args.skip_full:
        status("status_full", full=True)
    files = sorted(source.glob("*.parquet"))
    t = time.perf_counter()
    edited = edit(files, 0.01, int(args.n))
    print(json.dumps({"phase": "edit", "s": round(time.perf_counter() - t, 3), "edited": edited}), flush=True)
    backfill("changed_1pct")
    backfill("noop_after")
    if not args.skip_full:
        backfill("full", full=True)
    return 0


def mongo_child(n: int, model: str) -> int:
    """The same nights on MongoDB (SecantusDB, the test server, in this process), cursor on updated_at."""
    from datetime import UTC, datetime, timedelta

    from pymongo import MongoClient
    from secantus import SecantusDBServer
    from transformers import AutoTokenizer

    from pipeline.config import parse_config
    from pipeline.engine.options import RunOptions
    from pipeline.engine.runner import run
    from pipeline.parts import open_parts
    from pipeline.reporting.status import coverage

    ms = load_make_sample()
    with SecantusDBServer(storage_path=":memory:") as server:
        os.environ["PODEMBED_BENCH_MONGO_URI"] = server.uri
        client = MongoClient(server.uri, tz_aware=True)
        coll = client["bench"]["chunks"]
        t0 = datetime(2026, 11, 1, tzinfo=UTC)
        i = 0
        for batch in ms.make_large(n, batch_rows=2000):
            docs = []
            for row in batch.to_pylist():
                row["_id"] = row.pop("chunk_id")
                row["updated_at"] = t0 - timedelta(seconds=n - i)
                docs.append(row)
                i += 1
            coll.insert_many(docs)
        conn = {"uri_env": "PODEMBED_BENCH_MONGO_URI", "database": "bench"}
        cfg = parse_config(
            {
                "source": {
                    **conn,
                    "kind": "mongo",
                    "collection": "chunks",
                    "cursor_field": "updated_at",
                    "fields": {"chunk_id": "_id"},
                },
                "sink": {
                    **conn,
                    "kind": "mongo",
                    "collection": "vectors",
                    "mode": "collection",
                    "chunks_collection": "chunks",
                },
                "checkpoint": {"kind": "mongo"},
                "model": {
                    "id": "synthetic/tiny-t5",
                    "path": model,
                    "dimension": DIM,
                    "max_seq_length": 128,
                    "device": "cpu",
                },
                "report": {"dir": tempfile.mkdtemp(prefix="podembed-bench-mongo-")},
            }
        )
        ex = FakeEmbedder(cfg.model, AutoTokenizer.from_pretrained(model))

        def night(phase: str, **opts: Any) -> None:
            t = time.perf_counter()
            r = run(cfg, RunOptions(**opts), executor=ex)  # type: ignore[arg-type]
            print(
                json.dumps(
                    {
                        "phase": phase,
                        "s": round(time.perf_counter() - t, 3),
                        "status": r.status,
                        "embedded": r.counts.embedded,
                        "seen": r.counts.seen,
                        "sweep": r.sweep,
                        "rss_peak_mib": round(_rss_mib(), 1),
                    }
                ),
                flush=True,
            )

        night("first")
        night("noop")
        t = time.perf_counter()
        parts = open_parts(cfg)
        try:
            coverage(cfg, parts, full=False)
        finally:
            parts.close()
        print(json.dumps({"phase": "status", "s": round(time.perf_counter() - t, 3)}), flush=True)
        later = datetime.now(UTC)
        ids = [d["_id"] for d in coll.find({}, {"_id": 1}).limit(max(1, n // 100))]
        coll.update_many({"_id": {"$in": ids}}, {"$set": {"updated_at": later}, "$push": {"edits": 1}})
        coll.update_many({"_id": {"$in": ids}}, [{"$set": {"text": {"$concat": ["$text", " (edited)"]}}}])
        night("changed_1pct")
        night("full", full=True)
        client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    p.add_argument("--file-rows", type=int, default=10_000, help="rows per source file")
    p.add_argument("--skip-full", action="store_true", help="skip status --full and backfill --full")
    p.add_argument("--keep", action="store_true", help="keep the corpora and sinks")
    p.add_argument("--mongo", type=int, nargs="*", default=[], help="MongoDB sizes (SecantusDB in-process)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--n", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return mongo_child(int(args.n), args.model) if args.source == "mongo" else child(args)

    from tests import synthetic_model as sm

    tmp = Path(tempfile.mkdtemp(prefix="podembed-bench-scale-"))
    model = sm.build_model(tmp / "tiny-model", sm.TINY)
    results: dict[str, Any] = {"machine": machine(), "sizes": {}, "embedder": "fake (vectors from ids)"}
    rows = []
    for n in args.sizes:
        t = time.perf_counter()
        src = tmp / f"src-{n}"
        write_corpus(n, src, args.file_rows)
        print(f"{n}: corpus in {time.perf_counter() - t:.1f} s", flush=True)
        cmd = [sys.executable, __file__, "--child", "--source", str(src), "--out", str(tmp / f"out-{n}")]
        cmd += ["--model", str(model), "--n", str(n)] + (["--skip-full"] if args.skip_full else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        phases = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
        results["sizes"][str(n)] = phases
        for ph in phases:
            print(n, json.dumps(ph), flush=True)
        by = {ph["phase"]: ph for ph in phases}
        rows.append(
            {
                "chunks": n,
                "first_s": by.get("first", {}).get("s"),
                "noop_s": by.get("noop", {}).get("s"),
                "changed_1pct_s": by.get("changed_1pct", {}).get("s"),
                "status_s": by.get("status", {}).get("s"),
                "status_full_s": by.get("status_full", {}).get("s"),
                "full_s": by.get("full", {}).get("s"),
                "index_s": by.get("index", {}).get("s"),
                "search_indexed_s": by.get("search", {}).get("s"),
                "search_exact_s": by.get("search_exact", {}).get("s"),
                "rss_peak_mib": max((ph.get("rss_peak_mib", 0) for ph in phases), default=None),
                "sink_files": by.get("noop_after", by.get("first", {})).get("sink_files"),
            }
        )
    for n in args.mongo:
        cmd = [sys.executable, __file__, "--child", "--source", "mongo", "--model", str(model), "--n", str(n)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        phases = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
        results["sizes"][f"mongo-{n}"] = phases
        for ph in phases:
            print(f"mongo {n}", json.dumps(ph), flush=True)
    if len(rows) >= 2 and rows[-1]["noop_s"] and rows[-1]["first_s"]:
        n = rows[-1]["chunks"]
        factor = 10_000_000 / n
        # Linear extrapolation of each figure from the largest size (the figures grow at most linearly).
        rows.append(
            {
                "chunks": "10M (extrapolated, linear)",
                **{
                    k: round(v * factor, 1) if isinstance(v, int | float) and k != "rss_peak_mib" else v
                    for k, v in rows[-1].items()
                    if k != "chunks"
                },
            }
        )
    print(table(rows, title="scale (fake embedder: the pipeline's own cost)"))
    results["table"] = rows
    print(write_json("scale", results))
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
