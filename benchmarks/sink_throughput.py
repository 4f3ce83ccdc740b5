"""Vectors per second written by the Parquet sink and the MongoDB sink, write batch sizes swept.

768-dim float32 vectors (instructor-xl's size), chunks grouped 27 to an episode in
arrival order (the sample corpus's mean), written through the sinks' real ``write``:

- Parquet: ``ParquetSink.write`` (per-episode files: read, merge, write a temp file,
  fsync, rename, then the SQLite manifest), a fresh output folder per batch size;
- MongoDB: ``MongoSink.write`` in its default layout (in place on the chunk documents, a
  BSON float32 vector, each ``UpdateOne`` conditional on the embedded text; unordered
  ``bulk_write`` of ``write_batch`` updates), against SecantusDB (the MongoDB wire-protocol
  server used in tests) started as its own process on a temporary data folder, a fresh
  chunk collection per batch size (documents inserted beforehand, untimed).

The figure to beat is what ten A10G containers produce, from ``gpu_throughput.json``'s
estimate (item 5); the sinks must outrun it by a wide margin.

    python benchmarks/sink_throughput.py                      # ~2 min
    python benchmarks/sink_throughput.py --n 5000 --sinks parquet
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SAMPLE, machine, read_json, table, write_json

URI_ENV = "PODEMBED_BENCH_SINK_URI"
CHUNKS_PER_EPISODE = 27
FALLBACK_TEN_A10G = 262.0  # chunks/s, the H200-derived estimate recorded in BENCHMARKS.md


def _rate_row(sink: str, batch: int, n: int, seconds: float, dim: int, cpu: float, **extra: Any) -> dict:
    """One result row: vectors/s and MB/s of float32 vectors written in ``seconds``."""
    return {
        "sink": sink,
        "write_batch": batch,
        "vectors": n,
        "seconds": seconds,
        "vectors_per_s": n / seconds,
        "mb_per_s": n * dim * 4 / seconds / 1e6,
        "client_cpu_s": cpu,
        **extra,
    }


def make_records(n: int, dim: int, seed: int = 0) -> list[Any]:
    """``n`` VectorRecords with unit-norm random vectors and sample-corpus texts."""
    import numpy as np
    import pyarrow.parquet as pq

    from pipeline.records import VectorRecord, text_sha256

    texts = pq.read_table(SAMPLE, columns=["text"])["text"].to_pylist()
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, dim), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        ep = f"ep{i // CHUNKS_PER_EPISODE:06d}"
        text = texts[i % len(texts)]
        out.append(
            VectorRecord(
                chunk_id=f"{ep}-c{i % CHUNKS_PER_EPISODE:03d}",
                episode_id=ep,
                embedding=vecs[i],
                text_sha256=text_sha256(text),
                model_fingerprint="bench/0123456789abcdef0123",
                instruction="Represent the podcast transcript for retrieval:",
                embedded_at=now,
                run_id="bench-run",
                text=text,
            )
        )
    return out


def write_all(sink: Any, records: list[Any], batch: int) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) to write every record, ``batch`` per call."""
    t, c = time.perf_counter(), time.process_time()
    written = 0
    for s in range(0, len(records), batch):
        written += sink.write(records[s : s + batch])
    dt, cpu = time.perf_counter() - t, time.process_time() - c
    assert written == len(records), (written, len(records))
    return dt, cpu


def bench_parquet(records: list[Any], batches: list[int], dim: int, tmp: Path) -> list[dict[str, Any]]:
    from pipeline.files.sink import ParquetSink, ParquetSinkOptions

    rows = []
    for b in batches:
        out = tmp / f"parquet-{b}"
        sink = ParquetSink.open(ParquetSinkOptions(path=str(out)), dim)
        try:
            dt, cpu = write_all(sink, records, b)
        finally:
            sink.close()
        size = sum(f.stat().st_size for f in (out / "vectors").glob("*.parquet"))
        rows.append(
            _rate_row(
                "parquet",
                b,
                len(records),
                dt,
                dim,
                cpu,
                files=len(list((out / "vectors").glob("*.parquet"))),
                bytes_on_disk=size,
            )
        )
        print(f"parquet write_batch {b}: {len(records) / dt:,.0f} vectors/s", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_secantus(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``secantusd-py`` in its own process (its own GIL), on a data folder; waits for the port."""
    port = _free_port()
    exe = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
    data.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [exe, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"secantusd-py exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"mongodb://127.0.0.1:{port}/?directConnection=true"
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("secantusd-py did not open its port in 30 s")


def bench_mongo(records: list[Any], batches: list[int], dim: int, tmp: Path) -> list[dict[str, Any]]:
    from pymongo import MongoClient

    from pipeline.mongo.sink import MongoSink
    from pipeline.mongo.sink_options import MongoSinkOptions

    proc, uri = start_secantus(tmp / "secantus")
    os.environ[URI_ENV] = uri
    rows = []
    try:
        client = MongoClient(uri)
        for b in batches:
            coll = f"chunks_{b}"
            docs = [{"_id": r.chunk_id, "episode_id": r.episode_id, "text": r.text} for r in records]
            for s in range(0, len(docs), 5000):
                client["bench"][coll].insert_many(docs[s : s + 5000], ordered=False)
            opts = MongoSinkOptions(uri_env=URI_ENV, database="bench", collection=coll, write_batch=b)
            opts.validate("sink")
            sink = MongoSink.open(opts, dim)
            try:
                dt, cpu = write_all(sink, records, b)
            finally:
                sink.close()
            stored = client["bench"][coll].count_documents({"embedding_meta": {"$exists": True}})
            assert stored == len(records), stored
            rows.append(_rate_row("mongo (SecantusDB)", b, len(records), dt, dim, cpu))
            print(f"mongo write_batch {b}: {len(records) / dt:,.0f} vectors/s", flush=True)
            client["bench"].drop_collection(coll)
        client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20_000, help="vectors written per batch size")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024, 4096])
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--sinks", nargs="+", default=["parquet", "mongo"], choices=["parquet", "mongo"])
    args = p.parse_args(argv)

    gpu = read_json("gpu_throughput") or {}
    est = gpu.get("a10g_estimate") or {}
    ten = float(est.get("ten_a10g_chunks_per_s") or FALLBACK_TEN_A10G)
    basis = est.get("basis", "fallback constant") if est else "fallback constant"
    print(f"ten A10G containers produce about {ten:,.0f} vectors/s ({basis})", flush=True)

    records = make_records(args.n, args.dim)
    tmp = Path(tempfile.mkdtemp(prefix="podembed-bench-sink-", dir=os.environ.get("TMPDIR")))
    rows: list[dict[str, Any]] = []
    try:
        if "parquet" in args.sinks:
            rows += bench_parquet(records, args.batches, args.dim, tmp)
        if "mongo" in args.sinks:
            rows += bench_mongo(records, args.batches, args.dim, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for r in rows:
        r["x_ten_a10g"] = r["vectors_per_s"] / ten
    print()
    print(
        table(
            rows,
            [
                "sink",
                "write_batch",
                "vectors",
                "seconds",
                "client_cpu_s",
                "vectors_per_s",
                "mb_per_s",
                "x_ten_a10g",
            ],
            title=f"{args.dim}-dim float32 vectors, {CHUNKS_PER_EPISODE} chunks per episode; "
            f"x_ten_a10g = vectors/s over ten A10G containers ({ten:,.0f}/s); "
            f"client_cpu_s = this process's CPU (the SecantusDB server runs in its own process)",
        )
    )
    path = write_json(
        "sink_throughput",
        {
            "benchmark": "sink_throughput",
            "machine": machine(),
            "dim": args.dim,
            "n": args.n,
            "chunks_per_episode": CHUNKS_PER_EPISODE,
            "ten_a10g_vectors_per_s": ten,
            "ten_a10g_basis": basis,
            "rows": rows,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
