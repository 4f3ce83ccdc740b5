"""The local sink: one Lance table, upserts by chunk id, moves, deletes, atomic commits, compaction."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.engine.options import RunOptions
from pipeline.engine.runner import run
from pipeline.errors import ConfigError, TargetError
from pipeline.files.sink import ParquetSink, ParquetSinkOptions, read_vectors
from pipeline.records import Chunk, VectorRecord
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


def test_upsert_is_idempotent_and_one_row_per_chunk(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    sink.write([_rec("a1", "ep-a", 1), _rec("a2", "ep-a", 2), _rec("b1", "ep-b", 3)])
    sink.write([_rec("a1", "ep-a", 9, run="r2")])
    sink.write([_rec("a1", "ep-a", 9, run="r2")])  # a retried batch
    sink.write([_rec("a2", "ep-a", 7, run="r2"), _rec("a2", "ep-a", 8, run="r3")])  # twice in one batch
    table = read_vectors(tmp_path / "out")
    got = dict(zip(table["chunk_id"].to_pylist(), table["embedding"].to_pylist(), strict=True))
    assert got["a1"] == [9.0] * DIM and got["a2"] == [8.0] * DIM
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


def test_data_a_killed_writer_left_uncommitted_is_invisible_and_collected(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    sink.write([_rec("c1", "ep-old", 1)])
    sink.close()
    # What a writer killed after writing its data file but before its commit leaves: a data
    # file no version names (here: a copy of a real one, so it would be read if it counted).
    data = tmp_path / "out" / "vectors.lance" / "data"
    real = next(data.glob("*.lance"))
    orphan = data / ("0" * 8 + real.name[8:])
    shutil.copy(real, orphan)
    assert temp_files(tmp_path / "out") == [orphan]
    assert read_vectors(tmp_path / "out")["chunk_id"].to_pylist() == ["c1"]
    assert dataset_ids(tmp_path / "out") == ["c1"]
    sink = _sink(tmp_path)
    sink.recover()
    assert not orphan.exists(), "the next run's recover did not remove the uncommitted data"
    assert read_vectors(tmp_path / "out")["chunk_id"].to_pylist() == ["c1"]
    sink.close()


def test_delete_and_iter_states(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    sink.write([_rec(f"c{i}", f"ep-{i % 2}", i) for i in range(6)])
    sink.write([_rec("it's", "ep-'", 1)])  # a quote in an id is data, not SQL
    assert sink.delete(["c0", "c1", "missing", "' OR '1'='1"]) == 2
    assert sorted(s.chunk_id for s in sink.iter_states()) == ["c2", "c3", "c4", "c5", "it's"]
    assert sorted(raw_rows_in_files(tmp_path / "out")) == ["c2", "c3", "c4", "c5", "it's"]
    assert sink.delete(["c2", "c3", "c4", "c5", "it's"]) == 5
    assert raw_rows_in_files(tmp_path / "out") == [] and sink.count() == 0
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


def test_many_writes_end_in_few_files_readable_by_pyarrow_duckdb_and_polars(tmp_path: Path) -> None:
    import duckdb
    import lance
    import polars as pl

    sink = _sink(tmp_path)
    for w in range(120):  # 120 commits, each upserting 50 rows (a third of them updates)
        sink.write([_rec(f"c{(w * 33 + i) % 4000:05d}", f"ep-{i % 7}", w) for i in range(50)])
    sink.close()
    out = tmp_path / "out"
    expected = sorted({f"c{(w * 33 + i) % 4000:05d}" for w in range(120) for i in range(50)})
    data_files = list((out / "vectors.lance" / "data").glob("*"))
    all_files = [p for p in (out / "vectors.lance").rglob("*") if p.is_file()]
    assert len(data_files) <= 4, f"{len(data_files)} data files after compaction"
    assert len(all_files) <= 30, f"{len(all_files)} files in the table after cleanup"
    vectors = lance.dataset(str(out / "vectors.lance"))
    assert sorted(vectors.to_table(columns=["chunk_id"])["chunk_id"].to_pylist()) == expected
    rows = duckdb.sql("SELECT count(*), count(DISTINCT chunk_id) FROM vectors").fetchall()[0]
    assert rows == (len(expected), len(expected))
    assert pl.scan_pyarrow_dataset(vectors).select(pl.len()).collect().item() == len(expected)


def test_an_old_per_episode_folder_is_migrated_once_with_its_vectors(tmp_path: Path) -> None:
    """Last night's output of the old layout: read as it was, then moved into the table."""
    import sqlite3

    import pyarrow as pa

    from pipeline.files.sink import vector_schema

    out = tmp_path / "out"
    (out / "vectors").mkdir(parents=True)
    rows = [_rec("a", "ep1", 1), _rec("b", "ep1", 2), _rec("c", "ep2", 3)]
    schema = vector_schema(DIM)

    def table(recs: list[VectorRecord]) -> pa.Table:
        return pa.Table.from_pylist(
            [
                {**r.__dict__, "embedding": r.embedding.tolist()}
                if hasattr(r, "__dict__")
                else {
                    "chunk_id": r.chunk_id,
                    "episode_id": r.episode_id,
                    "embedding": r.embedding.tolist(),
                    "text_sha256": r.text_sha256,
                    "model_fingerprint": r.model_fingerprint,
                    "instruction": r.instruction,
                    "embedded_at": r.embedded_at,
                    "run_id": r.run_id,
                }
                for r in recs
            ],
            schema=schema,
        )

    pq.write_table(table([*rows[:2], _rec("c", "ep1", 9)]), out / "vectors" / "ep1.parquet")  # c: a stray row
    pq.write_table(table(rows[2:]), out / "vectors" / "ep2.parquet")
    conn = sqlite3.connect(out / "manifest.sqlite")
    conn.executescript(
        "CREATE TABLE owner (chunk_id TEXT PRIMARY KEY, file TEXT, episode_id TEXT, text_sha256 TEXT,"
        " model_fingerprint TEXT, run_id TEXT); CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
    )
    conn.executemany(
        "INSERT INTO owner VALUES (?, ?, ?, ?, 'fp', 'r1')",
        [
            ("a", "ep1.parquet", "ep1", "sha-a"),
            ("b", "ep1.parquet", "ep1", "sha-b"),
            ("c", "ep2.parquet", "ep2", "sha-c"),
        ],
    )
    conn.commit()
    conn.close()
    assert sorted(read_vectors(out)["chunk_id"].to_pylist()) == ["a", "b", "c"]  # read before migrating
    with pytest.raises(ConfigError, match="older podembed"):
        ParquetSink.open(ParquetSinkOptions(path=str(out)), DIM, read_only=True)
    sink = _sink(tmp_path)  # a writing open migrates
    got = read_vectors(out)
    assert dict(zip(got["chunk_id"].to_pylist(), got["episode_id"].to_pylist(), strict=True)) == {
        "a": "ep1",
        "b": "ep1",
        "c": "ep2",
    }
    assert set(sink.lookup([Chunk("a", "ep1", "x")])) == {"a"}
    sink.close()
    assert (out / "legacy-layout" / "manifest.sqlite").exists() and not (out / "vectors").exists()


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


def test_a_kill_at_any_table_step_of_a_prune_run_leaves_one_row_per_chunk_after_resume(
    tmp_path: Path, tiny_model_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash before or after each step the sink takes on the table (upsert commit, delete
    commit, compaction, cleanup): after a resume every reader sees exactly the source's chunks."""
    src, base, keep, moved = _scenario(tmp_path, tiny_model_dir)
    model = tiny_model(tiny_model_dir)
    expected = sorted(r["chunk_id"] for r in keep)
    calls = {"n": 0}
    steps = ("_upsert", "_delete_page", "_maintain", "_cleanup")

    def crashing(before: bool, at: int) -> None:
        for name in steps:
            real = getattr(ParquetSink, name)

            def step(self: ParquetSink, *args: object, _real: object = real) -> object:
                calls["n"] += 1
                if before and calls["n"] == at:
                    raise Crash  # killed just before this step
                result = _real(self, *args)  # type: ignore[operator]
                if not before and calls["n"] == at:
                    raise Crash  # killed just after it (committed; nothing after it done)
                return result

            monkeypatch.setattr(ParquetSink, name, step)

    crashes = 0
    for before in (True, False):
        for at in range(1, 9):
            out = tmp_path / f"{'before' if before else 'after'}-{at}"
            shutil.copytree(base, out)
            calls["n"] = 0
            crashing(before, at)
            with contextlib.suppress(Crash):
                run(make_config(src, out, model=model), RunOptions(prune=True))
            monkeypatch.undo()
            crashes += calls["n"] >= at
            resumed = run(make_config(src, out, model=model), RunOptions(prune=True))
            assert resumed.status == "completed"
            owned = read_vectors(out)
            assert sorted(owned["chunk_id"].to_pylist()) == expected, (before, at)
            assert sorted(dataset_ids(out)) == expected, f"before={before} at step {at}: stale rows"
            assert not temp_files(out), f"before={before} at step {at}: uncommitted data left"
            episodes = dict(zip(owned["chunk_id"].to_pylist(), owned["episode_id"].to_pylist(), strict=True))
            assert episodes[moved] == "ep-moved-here"
    assert crashes >= 10, "the injected crashes did not hit the table steps"


def test_stale_temp_files_of_dead_processes_are_removed_by_the_next_run(
    tmp_path: Path, tiny_model_dir: str
) -> None:
    src = write_rows(tmp_path / "s.parquet", sample_rows(n=10))
    out = tmp_path / "out"
    config = make_config(src, out, model=tiny_model(tiny_model_dir))
    run(config, RunOptions())
    code = "import os; print(os.getpid())"
    dead = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    data = out / "vectors.lance" / "data"
    real = next(data.glob("*.lance"))
    left = data / ("1" * 8 + real.name[8:])  # a data file whose commit never happened
    shutil.copy(real, left)
    report = out / "runs" / f".20261201T000000Z-abcdef.json.tmp-{int(dead.stdout)}"
    report.write_bytes(b"")
    assert run(config, RunOptions()).status == "completed"
    assert not left.exists(), "a killed writer's uncommitted data survived the next run"
    assert not report.exists(), "a dead process's temp report survived the next run"
    assert sorted(read_vectors(out)["chunk_id"].to_pylist()) == sorted(dataset_ids(out))
