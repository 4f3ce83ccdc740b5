# ruff: noqa: F811  (pytest fixtures imported from tests.mongo_fixtures are redefined as arguments)
"""Cursor-based MongoDB nights: only documents whose cursor moved are read; the full sweep
catches what the cursor cannot see; a crashed run does not advance the high-water mark."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.engine import incremental
from pipeline.engine.options import RunOptions
from pipeline.engine.runner import run
from pipeline.parts import Parts, open_parts
from tests.mongo_fixtures import (  # noqa: F401 - fixtures
    MongoEnv,
    load_chunks,
    mongo,
    mongo_config,
    mongo_server,
    stored,
    subset,
    tiny_model,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _setup(mongo: MongoEnv, model_dir: str, out: Path, **kw: Any) -> tuple[Config, list[dict[str, Any]]]:
    rows = subset(2)
    for i, r in enumerate(rows):  # ten minutes apart, the newest at T0
        r["updated_at"] = T0 - timedelta(minutes=10 * (len(rows) - 1 - i))
    load_chunks(mongo, rows)
    cfg = mongo_config(
        mongo,
        tiny_model(model_dir),
        out,
        source={"cursor_field": "updated_at", "cursor_overlap_s": 60.0},
        sink={"collection": "vectors", "mode": "collection", "chunks_collection": "chunks"},
        **kw,
    )
    return cfg, rows


def _read_ids(parts: Parts, seen: list[str]) -> None:
    original = parts.source.read

    def spy(shard: Any, selection: Any) -> Any:
        for record in original(shard, selection):
            seen.append(record.fields["chunk_id"])
            yield record

    parts.source.read = spy  # type: ignore[method-assign]


def test_a_cursor_night_reads_only_inserted_and_updated_documents(
    mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path
) -> None:
    cfg, rows = _setup(mongo, tiny_model_dir, tmp_path)
    first = run(cfg, RunOptions())
    assert first.status == "completed" and first.counts.embedded == len(rows)

    later = T0 + timedelta(hours=1)
    edited = rows[4]["chunk_id"]
    change = {"$set": {"text": "Edited after the night.", "updated_at": later}}
    mongo.db.chunks.update_one({"_id": edited}, change)
    mongo.db.chunks.insert_one(
        {"_id": "new-chunk", "episode_id": rows[0]["episode_id"], "text": "A new chunk.", "updated_at": later}
    )
    seen: list[str] = []
    night = run(cfg, RunOptions(), on_parts=lambda p: _read_ids(p, seen))
    assert night.status == "completed" and night.sweep.startswith("incremental")
    # The overlap (60 s) re-reads the document written at the last mark, and nothing older.
    expected = sorted([edited, "new-chunk", rows[-1]["chunk_id"]])
    assert sorted(seen) == expected, "the night read documents the cursor excludes"
    assert night.counts.embedded == 2 and night.counts.unchanged == len(rows) + 1 - 3
    vectors = stored(mongo, "vectors")
    assert set(vectors) == {r["chunk_id"] for r in rows} | {"new-chunk"}

    seen.clear()
    noop = run(cfg, RunOptions(), on_parts=lambda p: _read_ids(p, seen))
    assert noop.counts.embedded == 0 and sorted(seen) == sorted([edited, "new-chunk"])


def test_the_full_sweep_catches_an_update_the_cursor_missed_and_deletions(
    mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path
) -> None:
    cfg, rows = _setup(mongo, tiny_model_dir, tmp_path)
    run(cfg, RunOptions())
    sneaky = rows[2]["chunk_id"]
    mongo.db.chunks.update_one({"_id": sneaky}, {"$set": {"text": "Edited without touching updated_at."}})
    deleted = rows[7]["chunk_id"]
    mongo.db.chunks.delete_one({"_id": deleted})

    night = run(cfg, RunOptions())
    assert night.sweep.startswith("incremental") and night.counts.embedded == 0  # the cursor cannot see it

    full = run(cfg, RunOptions(full=True))
    assert full.sweep == "full (--full)"
    assert full.counts.embedded == 1 and full.counts.removed == 1
    pruned = run(cfg, RunOptions(full=True, prune=True))
    assert pruned.counts.pruned == 1
    assert deleted not in stored(mongo, "vectors")


def test_a_crashed_run_does_not_advance_the_high_water_mark(
    mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path
) -> None:
    cfg, rows = _setup(mongo, tiny_model_dir, tmp_path)
    first = run(cfg, RunOptions())
    mark = _snapshot(cfg).state["mark"]
    later = T0 + timedelta(hours=2)
    edited = rows[1]["chunk_id"]
    change = {"$set": {"text": "Edited before a crash.", "updated_at": later}}
    mongo.db.chunks.update_one({"_id": edited}, change)

    def crash_on_write(parts: Parts) -> None:
        def boom(records: Any) -> int:
            raise OSError("network gone")

        parts.sink.write = boom  # type: ignore[method-assign]
        parts.sink.write_all = boom  # type: ignore[method-assign]  # the runner's writer calls this

    assert run(cfg, RunOptions(), on_parts=crash_on_write).status == "failed"
    snap = _snapshot(cfg)
    assert snap.run_id == first.run_id and snap.state["mark"] == mark

    after = run(cfg, RunOptions())
    assert after.status == "completed" and after.counts.embedded == 1
    assert _snapshot(cfg).state["mark"] != mark


def _snapshot(cfg: Config) -> Any:
    parts = open_parts(cfg)
    try:
        return parts.checkpoint.source_snapshot(incremental.source_key(cfg, parts.source))
    finally:
        parts.close()
