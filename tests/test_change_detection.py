"""Change-proportional nights on Parquet: unchanged files are not decoded, changes and
deletions are found, a crashed run does not mark anything seen, the full sweep reads all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pytest

from pipeline.config import Config
from pipeline.engine import incremental
from pipeline.engine.in_flight import InFlight
from pipeline.engine.options import RunOptions
from pipeline.engine.runner import run
from pipeline.engine.shard_work import Prepared
from pipeline.files.source import ParquetSource
from pipeline.model.fingerprint import model_fingerprint
from pipeline.parts import Parts, open_parts
from pipeline.records import BatchResult, Chunk
from pipeline.reporting.report import Counts
from pipeline.reporting.status import coverage
from tests.helpers import dataset_ids, make_config, sample_rows, tiny_model, write_rows


@pytest.fixture()
def two_files(tmp_path: Path) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    rows = sample_rows(episodes=2)
    episodes = sorted({r["episode_id"] for r in rows})
    by_file = {
        "a.parquet": [r for r in rows if r["episode_id"] == episodes[0]],
        "b.parquet": [r for r in rows if r["episode_id"] == episodes[1]],
    }
    for name, part in by_file.items():
        write_rows(tmp_path / "src" / name, part)
    return tmp_path / "src", by_file


def _config(src: Path, out: Path, model_dir: str, **sections: Any) -> Config:
    return make_config(src, out, model=tiny_model(model_dir), **sections)


def _decoded_files(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Spy on the Parquet reader: the file of every row group decoded."""
    seen: list[str] = []
    original = ParquetSource._group

    def spy(self: ParquetSource, pf: Any, f: Path, rg: int, columns: list[str], keep: bool) -> Any:
        seen.append(f.name)
        return original(self, pf, f, rg, columns, keep)

    monkeypatch.setattr(ParquetSource, "_group", spy)
    return seen


def test_an_unchanged_file_is_not_decoded_and_a_changed_one_is(
    tmp_path: Path, two_files: tuple[Path, dict[str, list[dict[str, Any]]]], tiny_model_dir: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, by_file = two_files
    cfg = _config(src, tmp_path / "out", tiny_model_dir)
    first = run(cfg, RunOptions())
    assert first.status == "completed" and first.counts.embedded == sum(map(len, by_file.values()))

    decoded = _decoded_files(monkeypatch)
    noop = run(cfg, RunOptions())
    assert noop.status == "completed" and noop.counts.embedded == 0
    assert decoded == [], "a night with nothing changed decoded row groups"
    assert noop.counts.unchanged == first.counts.seen and noop.counts.seen == 0
    assert noop.sweep.startswith("incremental")

    rows_b = by_file["b.parquet"]
    rows_b[3] = dict(rows_b[3], text=rows_b[3]["text"] + " An edit made after the first night.")
    write_rows(src / "b.parquet", rows_b)
    night = run(cfg, RunOptions())
    assert night.counts.embedded == 1
    assert set(decoded) == {"b.parquet"}, f"decoded {sorted(set(decoded))}"
    assert night.counts.unchanged == len(by_file["a.parquet"])
    assert night.counts.skipped == len(rows_b) - 1


def test_a_deleted_chunk_and_a_deleted_file_are_found_and_pruned(
    tmp_path: Path, two_files: tuple[Path, dict[str, list[dict[str, Any]]]], tiny_model_dir: str
) -> None:
    src, by_file = two_files
    out = tmp_path / "out"
    cfg = _config(src, out, tiny_model_dir)
    assert run(cfg, RunOptions()).status == "completed"
    rows_b = by_file["b.parquet"]
    gone = rows_b.pop(0)["chunk_id"]
    write_rows(src / "b.parquet", rows_b)

    night = run(cfg, RunOptions())
    assert night.sweep.startswith("incremental") and night.counts.removed == 1
    # The count stays known on a night that reads nothing (no id is read to say so).
    assert run(cfg, RunOptions()).counts.removed == 1
    pruned = run(cfg, RunOptions(prune=True))
    assert pruned.counts.removed == 1 and pruned.counts.pruned == 1
    assert gone not in dataset_ids(out)

    (src / "a.parquet").unlink()
    night = run(cfg, RunOptions(prune=True))
    assert night.counts.removed == len(by_file["a.parquet"])
    assert sorted(dataset_ids(out)) == sorted(r["chunk_id"] for r in rows_b)


def test_a_crashed_run_does_not_advance_the_snapshot(
    tmp_path: Path, two_files: tuple[Path, dict[str, list[dict[str, Any]]]], tiny_model_dir: str
) -> None:
    src, by_file = two_files
    cfg = _config(src, tmp_path / "out", tiny_model_dir)
    first = run(cfg, RunOptions())
    rows_b = by_file["b.parquet"]
    rows_b[0] = dict(rows_b[0], text="A text changed before the night that crashes.")
    write_rows(src / "b.parquet", rows_b)

    def crash_on_write(parts: Parts) -> None:
        def boom(records: Any) -> int:
            raise OSError("disk gone")

        parts.sink.write = boom  # type: ignore[method-assign]

    crashed = run(cfg, RunOptions(), on_parts=crash_on_write)
    assert crashed.status == "failed"
    assert _snapshot(cfg).run_id == first.run_id, "a failed run recorded its snapshot"

    after = run(cfg, RunOptions())
    assert after.status == "completed" and after.counts.embedded == 1
    assert _snapshot(cfg).run_id == after.run_id


def test_the_full_sweep_reads_everything_and_comes_every_n_nights(
    tmp_path: Path, two_files: tuple[Path, dict[str, list[dict[str, Any]]]], tiny_model_dir: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, by_file = two_files
    total = sum(map(len, by_file.values()))
    cfg = _config(src, tmp_path / "out", tiny_model_dir, incremental={"full_sweep_every": 3})
    assert run(cfg, RunOptions()).sweep.startswith("full")
    full = run(cfg, RunOptions(full=True))
    assert full.sweep == "full (--full)" and full.counts.skipped == total and full.counts.unchanged == 0
    sweeps = [run(cfg, RunOptions()).sweep.split()[0] for _ in range(3)]
    assert sweeps == ["incremental", "incremental", "full"]


def test_the_removed_check_hashes_the_source_ids_once(
    tmp_path: Path, two_files: tuple[Path, dict[str, list[dict[str, Any]]]], tiny_model_dir: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Per-page ``is_in`` against every source id rebuilt the hash per page: quadratic."""
    src, by_file = two_files
    cfg = _config(src, tmp_path / "out", tiny_model_dir)
    assert run(cfg, RunOptions()).status == "completed"
    monkeypatch.setattr("pipeline.interfaces.source.REMOVED_PAGE", 10)  # many pages even for a small corpus
    calls: list[int] = []
    original = pc.is_in

    def counting(values: Any, value_set: Any = None, **kw: Any) -> Any:
        calls.append(len(value_set))
        return original(values, value_set=value_set, **kw)

    monkeypatch.setattr("pipeline.files.source.pc.is_in", counting)
    report = run(cfg, RunOptions(full=True))
    assert report.counts.removed == 0
    total = sum(map(len, by_file.values()))
    assert calls.count(total) == 1, f"the source's {total} ids were hashed {calls.count(total)} times"


def test_quick_status_reads_only_changed_files_and_full_status_is_exact(
    tmp_path: Path, two_files: tuple[Path, dict[str, list[dict[str, Any]]]], tiny_model_dir: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, by_file = two_files
    cfg = _config(src, tmp_path / "out", tiny_model_dir)
    before = _coverage(cfg, full=False)  # nothing ran yet: exact
    assert before.exact and before.missing == sum(map(len, by_file.values()))
    run(cfg, RunOptions())
    rows_b = by_file["b.parquet"]
    rows_b[1] = dict(rows_b[1], text="Changed after the night.")
    write_rows(src / "b.parquet", rows_b)

    decoded = _decoded_files(monkeypatch)
    quick = _coverage(cfg, full=False)
    assert set(decoded) == {"b.parquet"}
    assert not quick.exact and quick.unchanged == len(by_file["a.parquet"])
    assert quick.stale_text == 1 and quick.current == quick.total - 1

    decoded.clear()
    exact = _coverage(cfg, full=True)
    assert set(decoded) == {"a.parquet", "b.parquet"}
    assert exact.exact and exact.stale_text == 1 and exact.current == quick.current


def test_row_views_do_not_keep_the_batch_array_alive() -> None:
    """Each stored vector owns its memory: the executor's batch array can be freed at once."""
    chunks = [Chunk(chunk_id=f"c{i}", episode_id="e", text=f"text {i}") for i in range(4)]
    prepared = Prepared(
        shard=None,  # type: ignore[arg-type]
        chunks={c.chunk_id: c for c in chunks},
        batches=[],
        dead_letters=[],
        counts=Counts(),
    )
    vectors = np.arange(4 * 8, dtype=np.float32).reshape(4, 8)
    flight = InFlight(prepared, remaining=1)
    flight.absorb(BatchResult("b", [c.chunk_id for c in chunks], vectors), "fp", "run", "inst")
    assert len(flight.records) == 4
    for row, rec in enumerate(flight.records):
        assert not np.shares_memory(rec.embedding, vectors)
        assert np.array_equal(rec.embedding, vectors[row])


def _snapshot(cfg: Config) -> Any:
    parts = open_parts(cfg)
    try:
        return parts.checkpoint.source_snapshot(incremental.source_key(cfg, parts.source))
    finally:
        parts.close()


def _coverage(cfg: Config, *, full: bool) -> Any:
    parts = open_parts(cfg)
    try:
        return coverage(cfg, parts, full=full)
    finally:
        parts.close()


def test_model_fingerprint_change_forces_a_full_sweep(
    tmp_path: Path, two_files: tuple[Path, dict[str, list[dict[str, Any]]]], tiny_model_dir: str
) -> None:
    src, by_file = two_files
    out = tmp_path / "out"
    run(_config(src, out, tiny_model_dir), RunOptions())
    other = dict(tiny_model(tiny_model_dir), instruction="Represent the podcast segment for clustering:")
    cfg = make_config(src, out, model=other)
    assert model_fingerprint(cfg.model) != model_fingerprint(_config(src, out, tiny_model_dir).model)
    report = run(cfg, RunOptions())
    assert report.sweep.startswith("full") and report.counts.embedded == sum(map(len, by_file.values()))
