"""Scale figures for the local sink (issue 18.4/18.5): write throughput, files, search exact/indexed, recall.

Synthetic data shaped like real embeddings: a mixture of clustered unit vectors, 2,000
fixed centres (topics) plus Gaussian noise of the centres' own scale (two vectors of one
topic have a cosine of about 0.5, of two topics about 0), 768 dims; the queries are drawn
from the same mixture. (Uniform random vectors, or queries from topics the data does not
hold, have no near neighbours worth finding: every vector is nearly equally far, and no
index's recall means anything there.) Writes through ParquetSink.write in batches of
--batch (a shard's worth), then: files in the table, exact search (streamed, then from
the matrix `podembed index` writes), the index build (matrix + faiss IVF), indexed search
and its recall@10 against exact on the same queries (median of --queries queries).

    PYTHONPATH=$PWD python benchmarks/search_speed_scale.py --n 100000
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipeline.files import search as files_search
from pipeline.files.sink import ParquetSink, ParquetSinkOptions
from pipeline.interfaces.sink import VectorQuery
from pipeline.records import VectorRecord

CENTRES = 2_000
NOISE = 1.0


def vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` unit vectors of the mixture (the centres are the same for every seed)."""
    centres = np.random.default_rng(12_345).standard_normal((CENTRES, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    v = centres[rng.integers(0, CENTRES, n)] + NOISE * rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/search_speed_scale.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="podembed-scale-"))
    out = work / "out"
    now = datetime.now(UTC)
    sink = ParquetSink.open(ParquetSinkOptions(str(out)), args.dim)
    start = time.perf_counter()
    for s in range(0, args.n, args.batch):
        vecs = vectors(min(args.batch, args.n - s), args.dim, s)
        sink.write(
            [
                VectorRecord(f"c{s + i:09d}", f"ep{(s + i) // 40:07d}", v, "h" * 64, "fp", "i", now, "r")
                for i, v in enumerate(vecs)
            ]
        )
    write_s = time.perf_counter() - start
    sink.close()
    total_s = time.perf_counter() - start
    files = [p for p in (out / "vectors.lance").rglob("*") if p.is_file()]
    fig: dict[str, object] = {
        "n": args.n,
        "dim": args.dim,
        "write_batch": args.batch,
        "write_s": round(write_s, 1),
        "write_plus_final_compaction_s": round(total_s, 1),
        "vectors_per_s": round(args.n / total_s),
        "files_in_table": len(files),
        "data_files": len(list((out / "vectors.lance" / "data").glob("*"))),
        "table_bytes": sum(p.stat().st_size for p in files),
    }
    queries = vectors(args.queries, args.dim, 999_999_999)
    reader = ParquetSink.open(ParquetSinkOptions(str(out)), args.dim, read_only=True)

    def timed(q: np.ndarray) -> tuple[list[str], float, str]:
        t = time.perf_counter()
        o = reader.search(VectorQuery(q, 10, "fp", None, unit_vectors=True))
        return [h.chunk_id for h in o.hits], time.perf_counter() - t, o.method

    streamed = [timed(q) for q in queries[:3]]
    fig["exact_streamed_s"] = round(float(np.median([t for _, t, _ in streamed])), 3)
    reader.close()
    w = ParquetSink.open(ParquetSinkOptions(str(out)), args.dim)
    t = time.perf_counter()
    idx = files_search.build_index(w)
    fig["index_build_s"] = round(time.perf_counter() - t, 1)
    fig["index"] = idx.status
    fig["index_definition"] = idx.definition
    search_dir = out / files_search.SEARCH_DIR
    fig["index_files_bytes"] = {p.name: p.stat().st_size for p in search_dir.rglob("*") if p.is_file()}
    w.close()
    # exact from the matrix: the matrix path asked directly (search itself takes the index)
    reader = ParquetSink.open(ParquetSinkOptions(str(out)), args.dim, read_only=True)
    m = files_search._load_matrix(reader, reader.snapshot().version)
    exact, times = [], []
    for q in queries:
        t = time.perf_counter()
        hits, _ = files_search._search_matrix(m, VectorQuery(q, 10, "fp", None, unit_vectors=True), q)
        times.append(time.perf_counter() - t)
        exact.append([h.chunk_id for h in hits])
    fig["exact_matrix_s"] = round(float(np.median(times)), 3)
    ann = [timed(q) for q in queries]
    fig["ann_method"] = ann[0][2]
    fig["ann_max_s"] = round(float(np.max([t for _, t, _ in ann])), 3)
    fig["ann_s"] = round(float(np.median([t for _, t, _ in ann])), 3)
    fig["recall_at_10"] = round(
        float(np.mean([len(set(a) & set(e)) / 10 for (a, _, _), e in zip(ann, exact, strict=True)])), 3
    )
    reader.close()
    fig["files_after_index"] = sum(1 for p in (out / "vectors.lance").rglob("*") if p.is_file())
    print(json.dumps(fig, indent=2))
    path = Path(args.out)
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc[str(args.n)] = fig
    path.write_text(json.dumps(doc, indent=2) + "\n")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
