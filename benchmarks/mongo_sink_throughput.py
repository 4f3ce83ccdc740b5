"""Write throughput of the MongoDB sink into SecantusDB: 768-dim float32 vectors per second.

Starts ``secantusd-py`` in its own process on a temporary data directory (so the server
does not share this process's GIL), loads N chunk documents with sample-sized texts,
then times ``MongoSink.write`` (conditional unordered ``bulk_write`` of ``UpdateOne``)
for each layout: in place with a BSON binary vector (the default), in place with an
array of doubles, and a separate vectors collection (text checked before and after).
Also times ``lookup`` (the incremental check, metadata only).

    python benchmarks/mongo_sink_throughput.py [--chunks 20000] [--dim 768] [--batch 500]
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

from common import machine, table, write_json  # type: ignore[import-not-found]

ROOT = Path(__file__).resolve().parent.parent
URI_ENV = "PODEMBED_BENCH_MONGO_URI"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    exe = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
    proc = subprocess.Popen(
        [
            exe,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            str(data),
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"mongodb://127.0.0.1:{port}/?directConnection=true"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("secantusd-py did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--batch", type=int, default=500, help="sink.write_batch (updates per bulk_write)")
    ap.add_argument("--write-size", type=int, default=2048, help="records per sink.write call (a shard)")
    args = ap.parse_args()

    import numpy as np
    import pyarrow.parquet as pq
    from pymongo import MongoClient

    from pipeline.mongo.sink import MongoSink
    from pipeline.mongo.sink_options import MongoSinkOptions
    from pipeline.records import Chunk, VectorRecord, text_sha256
    from pipeline.toml_schema import from_table

    texts = pq.read_table(ROOT / "data" / "sample_chunks.parquet", columns=["text"])["text"].to_pylist()
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="podembed-mongo-bench-"))
    proc, uri = _start_server(tmp / "data")
    os.environ[URI_ENV] = uri
    results = []
    try:
        client = MongoClient(uri)
        db = client["bench"]
        docs = [
            {"_id": f"c{i:07d}", "episode_id": f"e{i // 30:05d}", "text": f"{i} {texts[i % len(texts)]}"}
            for i in range(args.chunks)
        ]
        t = time.perf_counter()
        for i in range(0, len(docs), 5000):
            db.chunks.insert_many(docs[i : i + 5000])
        load_s = time.perf_counter() - t
        vecs = rng.standard_normal((args.chunks, args.dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        now = datetime.now(UTC)
        records = [
            VectorRecord(
                chunk_id=d["_id"],
                episode_id=d["episode_id"],
                embedding=vecs[i],
                text_sha256=text_sha256(d["text"]),
                model_fingerprint="bench",
                instruction="x",
                embedded_at=now,
                run_id="bench",
                text=d["text"],
            )
            for i, d in enumerate(docs)
        ]
        layouts = [
            ("in place, binary float32", {"mode": "in_place", "vector_format": "binary"}),
            ("in place, array of doubles", {"mode": "in_place", "vector_format": "array"}),
            (
                "vectors collection, binary",
                {"mode": "collection", "collection": "vectors", "chunks_collection": "chunks"},
            ),
        ]
        for name, extra in layouts:
            opts = from_table(
                MongoSinkOptions,
                {
                    "uri_env": URI_ENV,
                    "database": "bench",
                    "collection": "chunks",
                    "write_batch": args.batch,
                    **extra,
                },
                "sink",
            )
            sink = MongoSink.open(opts, args.dim)
            t = time.perf_counter()
            written = 0
            for i in range(0, len(records), args.write_size):
                written += sink.write(records[i : i + args.write_size])
            write_s = time.perf_counter() - t
            chunks = [Chunk(d["_id"], d["episode_id"], d["text"]) for d in docs]
            t = time.perf_counter()
            for i in range(0, len(chunks), args.write_size):
                sink.lookup(chunks[i : i + args.write_size])
            lookup_s = time.perf_counter() - t
            sink.close()
            assert written == args.chunks, (name, written)
            results.append(
                {
                    "layout": name,
                    "vectors": written,
                    "write_s": round(write_s, 2),
                    "vectors_per_s": round(written / write_s),
                    "lookup_per_s": round(len(chunks) / lookup_s),
                }
            )
            db.chunks.update_many({}, {"$unset": {"embedding": "", "embedding_meta": ""}})
            db.drop_collection("vectors")
        client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        table(
            results,
            title=f"MongoSink into SecantusDB 0.7.0b3: {args.chunks} chunks, {args.dim} dims, "
            f"bulk_write of {args.batch} (load of the chunks: {args.chunks / load_s:.0f} docs/s)",
        )
    )
    write_json("mongo_sink_throughput", {"args": vars(args), "machine": machine(), "results": results})


if __name__ == "__main__":
    main()
