"""The approximate index of the local sink (issue 18.5): recall, version matching, filters.

Clustered synthetic unit vectors (real embeddings are clustered; uniform random vectors
have no near neighbours worth finding), a few thousand of them: ``ann.MIN_ROWS`` is lowered
so that `podembed index` builds the index at this size.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import FieldMap
from pipeline.files import ann
from pipeline.files import search as files_search
from pipeline.files.sink import ParquetSink, ParquetSinkOptions
from pipeline.interfaces.sink import VectorQuery
from pipeline.records import VectorRecord

DIM = 64
ROWS = 4_000
EPISODES = 40


def clustered(n: int, seed: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = centres[rng.integers(0, len(centres), n)] + 1.2 * rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def indexed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    monkeypatch.setattr(ann, "MIN_ROWS", 1_000)
    centres = np.random.default_rng(0).standard_normal((80, DIM)).astype(np.float32)
    data = clustered(ROWS, 1, centres)
    out = tmp_path / "out"
    sink = ParquetSink.open(ParquetSinkOptions(str(out)), DIM)
    now = datetime.now(UTC)
    sink.write(
        [
            VectorRecord(f"c{i:05d}", f"ep{i % EPISODES:02d}", v, "0" * 64, "fp", "i", now, "r")
            for i, v in enumerate(data)
        ]
    )
    sink.close()
    writer = ParquetSink.open(ParquetSinkOptions(str(out)), DIM)
    outcome = files_search.build_index(writer)
    writer.close()
    assert outcome.status == "created" and outcome.definition is not None
    assert outcome.definition["library"] == "faiss" and outcome.definition["vectors"] == ROWS
    return {"out": out, "data": data, "queries": clustered(20, 2, centres)}


def query(q: np.ndarray, k: int = 10, episodes: list[str] | None = None) -> VectorQuery:
    return VectorQuery(q, k, "fp", FieldMap(), episode_ids=tuple(episodes or ()), unit_vectors=True)


def brute_force(data: np.ndarray, q: np.ndarray, k: int, rows: np.ndarray | None = None) -> list[str]:
    scores = data @ q
    if rows is None:
        rows = np.arange(len(data))
    best = sorted(rows.tolist(), key=lambda i: (-scores[i], i))[:k]
    return [f"c{i:05d}" for i in best]


def test_index_search_has_recall_and_exact_scores(
    indexed: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4 of 63 lists, about the share probed at 1M (32 of 1,000): a wrong metric or an
    # unnormalized side would probe the wrong lists and lose the neighbours.
    monkeypatch.setattr(ann, "NPROBE", 4)
    data, queries = indexed["data"], indexed["queries"]
    assert isinstance(data, np.ndarray) and isinstance(queries, np.ndarray)
    reader = ParquetSink.open(ParquetSinkOptions(str(indexed["out"])), DIM, read_only=True)
    try:
        recalls = []
        for q in queries:
            outcome = reader.search(query(q))
            assert outcome.method.startswith("ann (faiss IVF")
            assert outcome.scanned < ROWS  # only the candidates were scored
            got = [h.chunk_id for h in outcome.hits]
            recalls.append(len(set(got) & set(brute_force(data, q, 10))) / 10)
            # scores are the exact cosines of the hits (re-scored from the matrix)
            exact = {f"c{i:05d}": float(s) for i, s in enumerate(data @ q)}
            assert [h.score for h in outcome.hits] == pytest.approx([exact[c] for c in got], abs=1e-5)
    finally:
        reader.close()
    assert np.mean(recalls) >= 0.95


def test_filters_with_the_index(indexed: dict[str, object]) -> None:
    data, queries = indexed["data"], indexed["queries"]
    assert isinstance(data, np.ndarray) and isinstance(queries, np.ndarray)
    reader = ParquetSink.open(ParquetSinkOptions(str(indexed["out"])), DIM, read_only=True)
    wide = [f"ep{e:02d}" for e in range(0, EPISODES, 2)]  # half the rows: the index, restricted
    narrow = ["ep07"]  # 1/40 of the rows: exact over those rows
    try:
        recalls = []
        for q in queries[:10]:
            outcome = reader.search(query(q, episodes=wide))
            assert outcome.method.startswith("ann")
            assert {h.episode_id for h in outcome.hits} <= set(wide)
            rows = np.flatnonzero(np.arange(ROWS) % 2 == 0)  # ep = i % 40, even episodes
            recalls.append(len({h.chunk_id for h in outcome.hits} & set(brute_force(data, q, 10, rows))) / 10)
            outcome = reader.search(query(q, episodes=narrow))
            assert outcome.method == "exact (matrix)"
            rows = np.flatnonzero(np.arange(ROWS) % EPISODES == 7)
            assert [h.chunk_id for h in outcome.hits] == brute_force(data, q, 10, rows)
    finally:
        reader.close()
    assert np.mean(recalls) >= 0.95


def test_a_write_after_indexing_is_searched_exactly_then_indexed_again(indexed: dict[str, object]) -> None:
    out, queries = indexed["out"], indexed["queries"]
    assert isinstance(queries, np.ndarray)
    target = queries[3]
    sink = ParquetSink.open(ParquetSinkOptions(str(out)), DIM)
    sink.write([VectorRecord("new-chunk", "ep-new", target, "1" * 64, "fp", "i", datetime.now(UTC), "r")])
    # A new version, not yet closed: the index is of the old one and must not be used.
    outcome = sink.search(query(target, k=3))
    assert outcome.method == "exact"
    assert outcome.hits[0].chunk_id == "new-chunk"
    assert any("older version" in n for n in outcome.notices)
    sink.close()  # the end of a run rebuilds the matrix and the index for the new version
    reader = ParquetSink.open(ParquetSinkOptions(str(out)), DIM, read_only=True)
    try:
        outcome = reader.search(query(target, k=3))
    finally:
        reader.close()
    assert outcome.method.startswith("ann")
    assert outcome.hits[0].chunk_id == "new-chunk"
    assert outcome.hits[0].score == pytest.approx(1.0, abs=1e-5)
    versions = [p.name for p in (Path(str(out)) / files_search.SEARCH_DIR).iterdir() if p.is_dir()]
    assert len(versions) == 1  # the old version's matrix and index are gone


def test_a_stale_index_file_is_never_used(indexed: dict[str, object]) -> None:
    """An index whose row count differs from the matrix (e.g. copied in by hand) is ignored."""
    out = Path(str(indexed["out"]))
    folder = next(p for p in (out / files_search.SEARCH_DIR).iterdir() if p.is_dir())
    assert ann.load(folder / ann.ANN_FILE, ROWS) is not None
    assert ann.load(folder / ann.ANN_FILE, ROWS + 1) is None
