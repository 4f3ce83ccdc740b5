"""The Parquet sink: per-episode files, ownership manifest, moves, deletes, atomic replace."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.errors import ConfigError, TargetError
from pipeline.files.sink import ParquetSink, ParquetSinkOptions, episode_file_name, read_vectors
from pipeline.records import Chunk, VectorRecord
from tests.helpers import raw_rows_in_files

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
