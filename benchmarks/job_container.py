"""CPU and memory of the job container (nightly, ingest, reindex): what to reserve for it.

The job container runs the podembed client: reads chunks from MongoDB, validates them,
counts tokens with the model's tokenizer, batches, sends payloads, decodes vectors and
writes them back. This measures that client on a production-shaped run, offline:

- MongoDB: a ``secantusd-py`` server in its own process (its CPU is not counted), loaded
  with ``N`` chunks from ``data/make_sample.py``'s ``make_large`` (10-400 words each);
- the production config's batching and Modal executor settings (768-dim vectors, in-place
  binary writes), with the GPUs replaced by the offline ``.map()`` stand-in
  (``tests.modal_fixtures.FakeMap``, lean mode) answering at once;
- the tokenizer of the tiny random T5 (``tests.synthetic_model``), a SentencePiece T5
  tokenizer like instructor-xl's.

The run happens in a fresh child process, which reports its own CPU time
(``time.process_time``) and peak RSS (``ru_maxrss``), before and after the run.

    python benchmarks/job_container.py                  # 20,000 chunks
    python benchmarks/job_container.py --chunks 5000 20000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, load_make_sample

URI_ENV = "PODEMBED_BENCH_MONGO_URI"


def child(config_path: str, n: int) -> None:
    """The measured run: prints one JSON line."""
    import resource

    sys.path.insert(0, str(ROOT))
    from pipeline.config import load_config
    from pipeline.engine.options import RunOptions
    from pipeline.engine.runner import run
    from pipeline.modal.executor import ModalExecutor
    from pipeline.model.tokens import TokenCounter
    from tests.modal_fixtures import FakeMap

    config = load_config(config_path)
    TokenCounter(config.model)  # imports transformers and reads the tokenizer once: the baseline
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu0, wall0 = time.process_time(), time.perf_counter()
    fake = FakeMap(dim=config.model.dimension, workers=10, record=False, delay_s=0.0, load_s=0.0, boot_s=0.0)
    executor = ModalExecutor(config.executor.options, config.model, map_fn=fake, job_container=True)
    fake.fingerprint = executor.fingerprint()
    report = run(config, RunOptions(), executor=executor)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "chunks": n,
                "embedded": report.counts.embedded,
                "status": report.status,
                "batches": report.batches,
                "cpu_s": round(cpu, 2),
                "wall_s": round(wall, 2),
                "cpu_s_per_1000_chunks": round(cpu / n * 1000, 3),
                "chunks_per_cpu_s": round(n / cpu, 1),
                "rss_baseline_mib": round(rss0, 1),
                "rss_peak_mib": round(rss, 1),
                "rss_growth_mib_per_1000_chunks": round((rss - rss0) / n * 1000, 2),
            }
        ),
        flush=True,
    )


def write_config(path: Path, model_dir: Path, database: str, out: Path) -> None:
    from tests.mongo_fixtures import to_toml

    raw = tomllib.loads((ROOT / "configs" / "production.toml").read_text())
    for section in ("source", "sink", "checkpoint"):
        raw[section]["uri_env"] = URI_ENV
        raw[section]["database"] = database
    raw["model"] = {
        "id": "synthetic/tiny-t5",
        "path": str(model_dir),
        "dimension": 768,  # production's vector size (the stand-in returns 768-dim vectors)
        "max_seq_length": 512,
        "device": "cpu",
    }
    raw["report"] = {"dir": str(out / "runs")}
    path.write_text(to_toml(raw), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, nargs="+", default=[20000])
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return

    sys.path.insert(0, str(ROOT))
    from pymongo import MongoClient

    from tests import synthetic_model as sm
    from tests.mongo_fixtures import SecantusProcess

    ms = load_make_sample()
    with tempfile.TemporaryDirectory(prefix="podembed-job-") as tmp:
        tmpdir = Path(tmp)
        model_dir = sm.build_model(tmpdir / "model", sm.TINY)
        server = SecantusProcess(tmpdir / "db")
        server.start()
        try:
            client = MongoClient(server.uri)
            for n in args.chunks:
                database = f"bench{n}"
                docs = []
                for batch in ms.make_large(n):
                    for row in batch.to_pylist():
                        docs.append({"_id": row.pop("chunk_id"), **row})
                client[database].chunks.insert_many(docs, ordered=False)
                del docs
                cfg = tmpdir / f"job-{n}.toml"
                write_config(cfg, model_dir, database, tmpdir / f"out-{n}")
                env = {**os.environ, URI_ENV: server.uri}
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(cfg), str(n)],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if out.returncode:
                    sys.stderr.write(out.stderr[-4000:])
                    raise SystemExit(out.returncode)
                print(out.stdout.strip().splitlines()[-1], flush=True)
            client.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
