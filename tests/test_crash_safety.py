"""Crash safety: SIGKILL or Ctrl-C at chosen points, then rerun: exactly one, correct, vector each.

Every interrupted run goes through :class:`tests.gated_local.GatedRun`: the run blocks before
each batch until the test lets it through, so a signal always lands at the intended
point whatever the machine's speed (no sleeps, no races).
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import FieldMap
from pipeline.engine.options import RunOptions
from pipeline.engine.runner import run
from pipeline.engine.selection import Selection
from pipeline.files.source import ParquetSource, ParquetSourceOptions
from tests.gated_local import KIND, GatedRun
from tests.helpers import (
    config_dict,
    dataset_ids,
    make_config,
    raw_rows_in_files,
    sample_rows,
    temp_files,
    tiny_model,
    vectors_by_id,
    write_rows,
    write_toml,
)

BATCHING = {"window_chunks": 12, "token_budget": 2048, "max_batch_size": 8}


def _done_shards(out: Path) -> int:
    db = out / "state.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM shards").fetchone()[0])
    except sqlite3.Error:
        return 0


def _assert_equals_reference(out: Path, reference: dict[str, np.ndarray]) -> None:
    """One vector per chunk, on disk too, each equal to the uninterrupted run's."""
    vectors = vectors_by_id(out)
    assert sorted(vectors) == sorted(reference)
    on_disk = raw_rows_in_files(out)
    assert len(on_disk) == len(set(on_disk)) == len(reference), "a chunk has two rows on disk"
    for cid, vec in vectors.items():
        assert float(np.abs(vec - reference[cid]).max()) <= 1e-6, cid


def _gated_config(tmp_path: Path, src: Path, out: Path, model: dict | None = None) -> tuple[Path, Path]:
    gate = tmp_path / "gate"
    raw = config_dict(src, out, model, BATCHING, executor={"kind": KIND, "gate": str(gate)})
    return write_toml(tmp_path / "c.toml", raw), gate


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], dict[str, np.ndarray]]:
    tmp = tmp_path_factory.mktemp("crash")
    rows = sample_rows(episodes=3)
    src = write_rows(tmp / "chunks.parquet", rows, row_group_size=6)
    reference_out = tmp / "reference"
    report = run(make_config(src, reference_out, batching=BATCHING), RunOptions())
    assert report.counts.embedded == len(rows)
    return src, rows, vectors_by_id(reference_out)


def test_sigkill_at_several_points_then_resume(
    tmp_path: Path, corpus: tuple[Path, list[dict], dict[str, np.ndarray]]
) -> None:
    src, rows, reference = corpus
    out = tmp_path / "out"
    config, gate = _gated_config(tmp_path, src, out)
    total_shards = -(-len(rows) // BATCHING["window_chunks"])

    # 1: model loaded, before the first batch: nothing is written.
    first = GatedRun(config, gate)
    first.block_at(0)
    first.proc.kill()
    first.finish()
    assert not (out / "vectors").exists() or not vectors_by_id(out)
    # 2 and 3: right after the first shard is done, and midway.
    for shards in (1, total_shards // 2 + 1):
        killed = GatedRun(config, gate)
        killed.release_until(lambda n=shards: _done_shards(out) >= n)
        killed.proc.send_signal(signal.SIGKILL)
        assert killed.finish()[0] == -signal.SIGKILL
    assert 0 < len(vectors_by_id(out)) < len(rows)

    final = run(make_config(src, out, batching=BATCHING), RunOptions())  # the resume, in-process
    assert final.status == "completed" and final.resumed
    assert final.counts.embedded < len(rows), "work done before the kills was redone"

    _assert_equals_reference(out, reference)
    assert sorted(dataset_ids(out)) == sorted(reference)
    assert not temp_files(out), "a temp file was left behind"


def test_ctrl_c_exits_130_says_how_to_resume_and_resume_skips_done_shards(
    tmp_path: Path, corpus: tuple[Path, list[dict], dict[str, np.ndarray]]
) -> None:
    src, rows, reference = corpus
    out = tmp_path / "out"
    config, gate = _gated_config(tmp_path, src, out)
    proc = GatedRun(config, gate)
    proc.release_until(lambda: _done_shards(out) >= 2)  # blocked before its next batch
    proc.proc.send_signal(signal.SIGINT)
    code, _, stderr = proc.finish()
    assert code == 130, stderr
    assert "resume with: podembed backfill --config" in stderr
    kept = vectors_by_id(out)
    assert len(kept) >= 2 * BATCHING["window_chunks"] - 12  # at least the done shards

    resumed = run(make_config(src, out, batching=BATCHING), RunOptions())
    assert resumed.status == "completed"
    assert resumed.resumed is True and resumed.shards_skipped_done >= 2
    assert resumed.counts.embedded == len(rows) - len(kept)
    _assert_equals_reference(out, reference)


def test_a_single_row_group_file_loses_at_most_one_window_to_sigkill(
    tmp_path: Path, tiny_model_dir: str
) -> None:
    """pyarrow and pandas write up to a million rows as one row group: it must still checkpoint."""
    rows = sample_rows(episodes=3)
    src = write_rows(tmp_path / "one_group.parquet", rows, row_group_size=len(rows))
    out = tmp_path / "out"
    model = tiny_model(tiny_model_dir)
    config, gate = _gated_config(tmp_path, src, out, model)

    window = BATCHING["window_chunks"]
    shards = ParquetSource.open(ParquetSourceOptions(str(src)), FieldMap(), window).plan(Selection())
    sizes = [s.estimated_chunks for s in shards]
    assert len(shards) > 3 and max(sizes) <= window, sizes
    killed = GatedRun(config, gate)

    def three_windows_written() -> bool:
        # Blocked before a batch: every shard embedded in full gets written (the writer
        # catches up), so the kill lands with the writer idle and the loss is exact.
        embedded = killed.embedded()
        full = sum(1 for k in range(len(sizes)) if sum(sizes[: k + 1]) <= embedded)
        killed.wait_until(lambda: _done_shards(out) >= full)
        return full >= 3

    killed.release_until(three_windows_written)
    embedded_before_kill = killed.embedded()
    killed.proc.send_signal(signal.SIGKILL)
    killed.finish()
    kept = len(vectors_by_id(out))
    assert kept >= sum(sizes[:3]), f"only {kept} vectors kept after 3 windows were done"
    assert embedded_before_kill - kept < window, (embedded_before_kill, kept)

    report = run(make_config(src, out, model=model, batching=BATCHING), RunOptions())
    assert report.resumed and report.status == "completed"
    assert report.counts.embedded == len(rows) - kept, "the resume redid work that was kept"
    ids = sorted(r["chunk_id"] for r in rows)
    assert sorted(vectors_by_id(out)) == ids
    assert sorted(dataset_ids(out)) == ids
    assert not temp_files(out)


def test_a_sigint_inherited_as_ignored_still_interrupts(tmp_path: Path, tiny_model_dir: str) -> None:
    """Started in the background by a shell or a scheduler, SIGINT arrives ignored: podembed restores it."""
    src = write_rows(tmp_path / "s.parquet", sample_rows(episodes=2), row_group_size=6)
    out = tmp_path / "out"
    config, gate = _gated_config(tmp_path, src, out, tiny_model(tiny_model_dir))

    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = GatedRun(config, gate, preexec_fn=ignore_sigint)
    proc.release_until(lambda: _done_shards(out) >= 1)  # mid-run, blocked before a batch
    proc.proc.send_signal(signal.SIGINT)
    try:
        code, _, stderr = proc.finish(timeout=60)
    except subprocess.TimeoutExpired:  # the signal was ignored: let the run end so the test fails, not hangs
        proc.open()
        code, _, stderr = proc.finish()
    assert code == 130, f"exit {code}: SIGINT was ignored\n{stderr}"
    assert "resume with:" in stderr


def test_a_sigterm_after_the_run_is_recorded_exits_0(tmp_path: Path, tiny_model_dir: str) -> None:
    src = write_rows(tmp_path / "s.parquet", sample_rows(n=20))
    out = tmp_path / "out"
    config, gate = _gated_config(tmp_path, src, out, tiny_model(tiny_model_dir))
    proc = GatedRun(config, gate, hold_close=True)
    proc.open()
    proc.wait_for("closing")  # the run is recorded; the executor is being closed
    with sqlite3.connect(out / "state.sqlite") as conn:
        assert conn.execute("SELECT status FROM runs").fetchall() == [("completed",)]
    proc.proc.send_signal(signal.SIGTERM)
    (gate / "go-close").touch()
    code, _, stderr = proc.finish()
    assert code == 0, f"exit {code} after the run was recorded as completed\n{stderr}"
