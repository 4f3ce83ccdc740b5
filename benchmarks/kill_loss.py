"""What a kill -9 loses, in chunks and in seconds of embedding, on the default config.

A 900-chunk Parquet file in ONE row group (one shard: the case issue 19 measured losing
all of it), the real MiniLM model, ``configs/local.toml`` as shipped but for the paths
and ``report.progress_every_s = 1`` (progress lines each second are how the script sees
how far embedding got; they change nothing else). For each kill point the backfill runs
from scratch in a subprocess, is killed with SIGKILL once a progress line reports at
least that many chunks embedded, and the vectors that survived are counted:

    lost = embedded at the kill (the last progress line) - vectors in the sink after it

Run: ``python benchmarks/kill_loss.py [--every 15] [--every 86400]`` (86400 = the old
behaviour, one write per shard). Results: benchmarks/results/kill_loss.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, SAMPLE  # type: ignore[import-not-found]

N_CHUNKS = 900
LINE = re.compile(r"(\d+)/(\d+) chunks .*?([\d.]+) chunks/s")


def corpus(path: Path) -> Path:
    """900 chunks (the sample, topped up with renamed copies) in a single row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(SAMPLE).to_pylist()
    extra = [{**r, "chunk_id": r["chunk_id"] + "-copy"} for r in rows[: N_CHUNKS - len(rows)]]
    table = pa.Table.from_pylist((rows + extra)[:N_CHUNKS], schema=pq.read_schema(SAMPLE))
    pq.write_table(table, path, row_group_size=N_CHUNKS)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    return path


def toml(raw: dict[str, Any]) -> str:
    """The shipped config as TOML again (two levels are enough)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return json.dumps(v)

    out = []
    for section, table in raw.items():
        out.append(f"[{section}]")
        out += [f"{k} = {value(v)}" for k, v in table.items() if not isinstance(v, dict)]
        for name, sub in ((k, v) for k, v in table.items() if isinstance(v, dict)):
            out.append(f"[{section}.{name}]")
            out += [f"{k} = {value(v)}" for k, v in sub.items()]
    return "\n".join(out) + "\n"


def one_kill(work: Path, src: Path, every: float | None, target: int) -> dict[str, Any]:
    raw = tomllib.loads((ROOT / "configs" / "local.toml").read_text())
    out = work / f"out-{every}-{target}"
    raw["source"]["path"] = str(src)
    raw["sink"]["path"] = str(out)
    raw.setdefault("report", {})["dir"] = str(out / "runs")
    raw["report"]["progress_every_s"] = 1
    if every is not None:
        raw.setdefault("batching", {})["write_every_s"] = every
    cfg = work / f"c-{every}-{target}.toml"
    cfg.write_text(toml(raw))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "backfill", "--config", str(cfg)],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    embedded, rate, started, partial_writes = 0, 0.0, time.monotonic(), 0
    assert proc.stderr is not None
    for line in proc.stderr:
        partial_writes += "shard partly written" in line
        m = LINE.search(line)
        if m:
            embedded, rate = int(m.group(1)), float(m.group(3))
            if embedded >= target:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait()
    from pipeline.files.sink import read_vectors

    durable = read_vectors(out).num_rows if (out / "vectors").exists() else 0
    lost = max(0, embedded - durable)
    return {
        "write_every_s": every if every is not None else "default",
        "kill_at_embedded": embedded,
        "durable": durable,
        "lost_chunks": lost,
        "rate_chunks_s": rate,
        "lost_s": round(lost / rate, 1) if rate else None,
        "partial_writes_seen": partial_writes,
        "wall_s": round(time.monotonic() - started, 1),
        "killed": proc.returncode == -signal.SIGKILL,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--every", type=float, action="append", help="batching.write_every_s (default: config's)")
    ap.add_argument("--targets", default="300,600,880")
    args = ap.parse_args()
    everies: list[float | None] = args.every or [None]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = corpus(work / "one_row_group.parquet")
        for every in everies:
            for target in (int(t) for t in args.targets.split(",")):
                r = one_kill(work, src, every, target)
                print(json.dumps(r), flush=True)
                results.append(r)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "kill_loss.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
