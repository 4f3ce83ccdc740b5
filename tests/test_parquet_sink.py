"""The Parquet sink: per-episode files, ownership manifest, moves, deletes, atomic replace."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.errors import ConfigError, TargetError
from pipeline.files import sink as sink_module
from pipeline.files.sink import ParquetSink, ParquetSinkOptions, episode_file_name, read_vectors
from pipeline.records import Chunk, VectorRecord
from pipeline.runner import RunOptions, run
from tests.helpers import (
    dataset_ids,
    make_config,
    raw_rows_in_files,
    sample_rows,
    temp_files,
    tiny_model,
    write_rows,
)

DIM = 4


def _rec(cid: str, episode: str, value: float, run: str = "r1") -> VectorRecord:
    v = np.full(DIM, value, dtype=np.float32)
    return VectorRecord(cid, episode, v, f"sha-{cid}", "fp", "instr", datetime.now(UTC), run)


def _sink(tmp_path: Path, dim: int = DIM) -> ParquetSink:
    return ParquetSink.open(ParquetSinkOptions(path=str(tmp_path / "out")), dim)


def test_upsert_is_idempotent_and_touches_only_the_episodes_written(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    sink.write([_rec("a1", "ep-a", 1), _rec("a2", "ep-a", 2), _rec("b1", "ep-b", 3)])
    b_file = tmp_path / "out" / "vectors" / episode_file_name("ep-b")
    b_mtime = b_file.stat().st_mtime_ns
    sink.write([_rec("a1", "ep-a", 9, run="r2")])
    sink.write([_rec("a1", "ep-a", 9, run="r2")])  # a retried batch
    assert b_file.stat().st_mtime_ns == b_mtime, "an unrelated episode file was rewritten"
    table = read_vectors(tmp_path / "out")
    got = dict(zip(table["chunk_id"].to_pylist(), table["embedding"].to_pylist(), strict=True))
    assert got["a1"] == [9.0] * DIM and got["a2"] == [2.0] * DIM
    assert sorted(raw_rows_in_files(tmp_path / "out")) == ["a1", "a2", "b1"]
    states = sink.lookup([Chunk("a1", "ep-a", "x"), Chunk("zz", "ep-a", "y")])
    assert set(states) == {"a1"} and states["a1"].run_id == "r2"
    sink.close()


def test_a_chunk_moved_to_another_episode_keeps_exactly_one_vector(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    sink.write([_rec("c1", "ep-old", 1), _rec("c2", "ep-old", 2)])
    sink.write([_rec("c1", "ep-new", 5)])
    assert sorted(raw_rows_in_files(tmp_path / "out")) == ["c1", "c2"]
    table = read_vectors(tmp_path / "out")
    assert dict(zip(table["chunk_id"].to_pylist(), table["episode_id"].to_pylist(), strict=True)) == {
        "c1": "ep-new",
        "c2": "ep-old",
    }
    sink.close()


def test_rows_not_owned_after_a_crash_are_invisible_and_collected(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    sink.write([_rec("c1", "ep-old", 1)])
    # Simulate a crash after the new episode file was renamed into place but before the
    # manifest commit: the new file holds c1 too, but the manifest still says ep-old.
    old = tmp_path / "out" / "vectors" / episode_file_name("ep-old")
    new = tmp_path / "out" / "vectors" / episode_file_name("ep-new")
    pq.write_table(pq.read_table(old), new)
    assert raw_rows_in_files(tmp_path / "out").count("c1") == 2
    assert read_vectors(tmp_path / "out")["chunk_id"].to_pylist() == ["c1"]
    sink.write([_rec("c9", "ep-new", 3)])  # the next write of ep-new drops the stray row
    assert sorted(raw_rows_in_files(tmp_path / "out")) == ["c1", "c9"]
    sink.close()


def test_delete_and_iter_states(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    sink.write([_rec(f"c{i}", f"ep-{i % 2}", i) for i in range(6)])
    assert sink.delete(["c0", "c1", "missing"]) == 2
    assert sorted(s.chunk_id for s in sink.iter_states()) == ["c2", "c3", "c4", "c5"]
    assert sorted(raw_rows_in_files(tmp_path / "out")) == ["c2", "c3", "c4", "c5"]
    sink.delete(["c2", "c3", "c4", "c5"])
    assert not list((tmp_path / "out" / "vectors").glob("*.parquet")), "empty files are removed"
    sink.close()


def test_refuses_nan_and_other_dimensions(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    bad = _rec("n", "ep", 1)
    bad.embedding[0] = np.nan
    with pytest.raises(TargetError, match="non-finite"):
        sink.write([bad])
    sink.write([_rec("ok", "ep", 1)])
    sink.close()
    with pytest.raises(ConfigError, match="holds 4-dimension vectors"):
        _sink(tmp_path, dim=8)


def test_episode_file_names_are_safe_and_distinct() -> None:
    names = {episode_file_name(e) for e in ["a/b", "a_b", "../../etc", "ép 1", "x" * 300]}
    assert len(names) == 5
    for n in names:
        assert "/" not in n and not n.startswith(".") and len(n) < 120


class Crash(BaseException):
    """A kill at a chosen instant: a BaseException, so nothing on the way catches it."""


def _scenario(tmp_path: Path, tiny_model_dir: str) -> tuple[Path, Path, list[dict], str]:
    """A backfilled target whose source then loses chunks (some of an episode, one whole
    episode) and moves one chunk to a new episode: ``backfill --prune`` writes, moves and
    deletes files."""

    rows = sample_rows(episodes=3)
    src = write_rows(tmp_path / "src.parquet", rows)
    base = tmp_path / "base"
    model = tiny_model(tiny_model_dir)
    assert run(make_config(src, base, model=model), RunOptions()).status == "completed"
    episodes = sorted({r["episode_id"] for r in rows})
    first = [r for r in rows if r["episode_id"] == episodes[0]]
    keep = [r for r in rows if r["episode_id"] != episodes[1]]  # a whole episode leaves
    keep = [r for r in keep if r["chunk_id"] not in {x["chunk_id"] for x in first[:5]}]  # and part of one
    moved = keep[-1]["chunk_id"]
    keep[-1] = dict(keep[-1], episode_id="ep-moved-here")  # same text, another episode
    write_rows(src, keep)
    return src, base, keep, moved


def test_a_kill_at_any_file_step_of_a_prune_run_leaves_one_row_per_chunk_after_resume(
    tmp_path: Path, tiny_model_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, base, keep, moved = _scenario(tmp_path, tiny_model_dir)
    model = tiny_model(tiny_model_dir)
    expected = sorted(r["chunk_id"] for r in keep)
    real_replace_file = ParquetSink._replace_file
    real_os_replace = os.replace
    calls = {"n": 0}

    def crash_before_rename(at: int) -> None:
        class SinkOs:  # the sink module's `os`: only its renames crash, nobody else's
            def __getattr__(self, name: str) -> object:
                return getattr(os, name)

            @staticmethod
            def replace(a: object, b: object) -> None:
                calls["n"] += 1
                if calls["n"] == at:
                    raise Crash  # the temp file is written, not yet renamed
                real_os_replace(a, b)  # type: ignore[arg-type]

        monkeypatch.setattr(sink_module, "os", SinkOs())

    def crash_after_file(at: int) -> None:
        def replace_file(self: ParquetSink, name: str, keep_rows: object) -> None:
            real_replace_file(self, name, keep_rows)  # type: ignore[arg-type]
            calls["n"] += 1
            if calls["n"] == at:
                raise Crash  # the file is in place; the manifest or the other files are not

        monkeypatch.setattr(ParquetSink, "_replace_file", replace_file)

    crashes = 0
    for inject in (crash_before_rename, crash_after_file):
        for at in range(1, 8):
            out = tmp_path / f"{inject.__name__}-{at}"
            shutil.copytree(base, out)
            calls["n"] = 0
            inject(at)
            with contextlib.suppress(Crash):
                run(make_config(src, out, model=model), RunOptions(prune=True))
            monkeypatch.undo()
            crashes += calls["n"] >= at
            resumed = run(make_config(src, out, model=model), RunOptions(prune=True))
            assert resumed.status == "completed"
            owned = read_vectors(out)
            assert sorted(owned["chunk_id"].to_pylist()) == expected, (inject.__name__, at)
            assert sorted(dataset_ids(out)) == expected, f"{inject.__name__} at step {at}: stale rows"
            assert not temp_files(out), f"{inject.__name__} at step {at}: temp file left"
            episodes = dict(zip(owned["chunk_id"].to_pylist(), owned["episode_id"].to_pylist(), strict=True))
            assert episodes[moved] == "ep-moved-here"
    assert crashes >= 6, "the injected crashes did not hit the file steps"


def test_stale_temp_files_of_dead_processes_are_removed_by_the_next_run(
    tmp_path: Path, tiny_model_dir: str
) -> None:
    src = write_rows(tmp_path / "s.parquet", sample_rows(n=10))
    out = tmp_path / "out"
    config = make_config(src, out, model=tiny_model(tiny_model_dir))
    run(config, RunOptions())
    code = "import os; print(os.getpid())"
    dead = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        name = next((out / "vectors").glob("*.parquet")).name
        left = out / "vectors" / f".{name}.tmp-{int(dead.stdout)}"  # what a SIGKILL mid-write leaves
        busy = out / "vectors" / f".{name}.tmp-{live.pid}"  # another live process's
        report = out / "runs" / f".20261201T000000Z-abcdef.json.tmp-{int(dead.stdout)}"
        for path in (left, busy, report):
            path.write_bytes(b"")
        assert run(config, RunOptions()).status == "completed"
        assert not left.exists(), "a dead process's temp file survived the next run"
        assert not report.exists(), "a dead process's temp report survived the next run"
        assert busy.exists(), "a live process's temp file was deleted"
    finally:
        live.stdin.close()  # type: ignore[union-attr]
        live.wait()
