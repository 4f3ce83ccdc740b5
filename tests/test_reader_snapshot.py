"""Readers see one consistent version while a writer moves, deletes and compacts (issue 19.1).

The race is driven by a gate, not by luck: the reader is paused inside its scan (after its
first block or first state) and the whole writer step runs right there, then the reader
goes on. A reader working from one snapshot returns exactly the chunks of the version it
started on, each once, and never finds a file gone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from pipeline.files import search as files_search
from pipeline.files.sink import ParquetSink, ParquetSinkOptions
from pipeline.interfaces.sink import VectorQuery
from pipeline.records import VectorRecord

DIM = 4
EPISODES = 6
PER_EPISODE = 5


def _rec(cid: str, episode: str, seed: int) -> VectorRecord:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return VectorRecord(cid, episode, v / np.linalg.norm(v), f"sha-{cid}", "fp", "i", datetime.now(UTC), "r")


def _fill(out: Path) -> set[str]:
    sink = ParquetSink.open(ParquetSinkOptions(path=str(out)), DIM)
    for e in range(EPISODES):
        sink.write([_rec(f"e{e}-c{i}", f"ep{e}", e * 100 + i) for i in range(PER_EPISODE)])
    sink.close()
    return {f"e{e}-c{i}" for e in range(EPISODES) for i in range(PER_EPISODE)}


def _writer_step(out: Path) -> set[str]:
    """Move every chunk of the first episodes to the last one, delete some, add some, compact."""
    sink = ParquetSink.open(ParquetSinkOptions(path=str(out)), DIM)
    last = f"ep{EPISODES - 1}"
    moved = [_rec(f"e{e}-c{i}", last, 7000 + e * 10 + i) for e in range(3) for i in range(PER_EPISODE)]
    sink.write(moved)
    sink.delete([f"e3-c{i}" for i in range(PER_EPISODE)])
    sink.write([_rec(f"new-{i}", "ep-new", 9000 + i) for i in range(4)])
    sink.close()  # compaction and cleanup of old versions
    after = {f"e{e}-c{i}" for e in range(EPISODES) for i in range(PER_EPISODE)}
    return (after - {f"e3-c{i}" for i in range(PER_EPISODE)}) | {f"new-{i}" for i in range(4)}


def test_search_during_moves_and_compaction_returns_each_chunk_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    before = _fill(out)
    monkeypatch.setattr(files_search, "BLOCK_ROWS", 4)  # many blocks: the gate falls mid-scan
    real_add = files_search._TopK.add
    fired: list[set[str]] = []

    def gated_add(self: object, *args: object) -> None:
        real_add(self, *args)  # type: ignore[arg-type]
        if not fired:
            fired.append(_writer_step(out))  # the writer runs between the reader's blocks

    monkeypatch.setattr(files_search._TopK, "add", gated_add)
    reader = ParquetSink.open(ParquetSinkOptions(path=str(out)), DIM, read_only=True)
    try:
        outcome = reader.search(VectorQuery(np.ones(DIM, np.float32), 1000, "fp", None, unit_vectors=True))
    finally:
        reader.close()
    assert fired, "the gate never opened: the writer did not run mid-scan"
    ids = [h.chunk_id for h in outcome.hits]
    assert len(ids) == len(set(ids)), f"chunks found twice: {sorted({i for i in ids if ids.count(i) > 1})}"
    assert set(ids) in (before, fired[0]), "the hits mix two versions"


def test_iter_states_during_a_writer_is_one_version(tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = _fill(out)
    reader = ParquetSink.open(ParquetSinkOptions(path=str(out)), DIM, read_only=True)
    try:
        states = reader.iter_states()
        seen = [next(states).chunk_id]
        after = _writer_step(out)
        seen += [s.chunk_id for s in states]
    finally:
        reader.close()
    assert len(seen) == len(set(seen))
    assert set(seen) in (before, after), "the states mix two versions"
    # The writer's deferred cleanup runs on its next write, once no reader holds the old version.
    sink = ParquetSink.open(ParquetSinkOptions(path=str(out)), DIM)
    sink.recover()
    sink.close()
    fresh = ParquetSink.open(ParquetSinkOptions(path=str(out)), DIM, read_only=True)
    assert {s.chunk_id for s in fresh.iter_states()} == after
    fresh.close()
