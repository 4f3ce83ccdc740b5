# ruff: noqa: F811  (pytest fixtures imported from tests.mongo_fixtures are redefined as arguments)
"""MongoDB source -> MongoDB sink, end to end in this process, over TCP to a real server.

The server is SecantusDB (MongoDB wire protocol on WiredTiger); the model is the tiny
random-weight T5 (vectors meaningless, but real, normalized and deterministic).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bson import ObjectId

from pipeline.engine.options import RunOptions
from pipeline.engine.runner import run
from pipeline.engine.selection import Selection
from pipeline.interfaces.executor import Executor
from pipeline.parts import open_executor
from pipeline.records import Batch, BatchResult, text_sha256
from tests.helpers import make_config, vectors_by_id, write_rows
from tests.mongo_fixtures import (  # noqa: F401 - fixtures
    TINY_DIM,
    MongoEnv,
    assert_unit,
    load_chunks,
    mongo,
    mongo_config,
    mongo_server,
    stored,
    subset,
    tiny_model,
)

VECTOR_KEYS = {"embedding", "embedding_meta"}


class HookExecutor(Executor):
    """Wraps a real executor to act between embedding and writing (another writer, a delay)."""

    Options = type(None)

    def __init__(
        self, inner: Executor, on_result: Callable[[BatchResult], None] | None = None, delay: float = 0.0
    ) -> None:
        self.inner = inner
        self.on_result = on_result
        self.delay = delay
        self.device_label = inner.device_label

    @classmethod
    def open(cls, options: Any, model: Any) -> HookExecutor:  # pragma: no cover - not registered
        raise NotImplementedError

    def fingerprint(self) -> str:
        return self.inner.fingerprint()

    def tokenizer(self) -> Any:
        return self.inner.tokenizer()  # type: ignore[attr-defined]

    def embed(self, batches: Iterable[Batch]) -> Iterator[BatchResult]:
        for result in self.inner.embed(batches):
            if self.delay:
                time.sleep(self.delay)
            if self.on_result is not None:
                self.on_result(result)
            yield result

    def close(self) -> None:
        self.inner.close()


def _plain(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in VECTOR_KEYS}


def _snapshot(env: MongoEnv) -> dict[str, dict[str, Any]]:
    return {str(d["_id"]): d for d in env.db.chunks.find()}


# --------------------------------------------------------------------------- backfill


@pytest.mark.parametrize(("vector_format", "limit"), [("binary", None), ("array", 120)])
def test_backfill_sample_corpus_in_place(
    mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path, vector_format: str, limit: int | None
) -> None:
    from pipeline.mongo.sample import load_sample

    loaded = load_sample(mongo.database, "chunks", mongo.uri_env, limit=limit)
    total = limit or 841
    assert loaded.inserted == loaded.read == total
    assert load_sample(mongo.database, "chunks", mongo.uri_env, limit=limit).unchanged == total
    before = _snapshot(mongo)
    cfg = mongo_config(
        mongo,
        tiny_model(tiny_model_dir),
        tmp_path,
        sink={"vector_format": vector_format},
        batching={"window_chunks": 256},
    )
    report = run(cfg, RunOptions())
    assert report.status == "completed", report.error
    assert report.counts.embedded == total and report.counts.dead_lettered == 0

    vecs = stored(mongo)
    assert set(vecs) == set(before)  # every chunk exactly one vector (one field on its own doc)
    assert mongo.db.chunks.count_documents({}) == total  # no document created
    assert_unit([v["vector"] for v in vecs.values()], TINY_DIM)
    raw = mongo.db.chunks.find_one()["embedding"]
    if vector_format == "binary":
        assert raw.subtype == 9  # BSON binary vector, float32
    else:
        assert isinstance(raw, list) and len(raw) == TINY_DIM
    for cid, v in vecs.items():
        meta = v["meta"]
        assert meta["text_sha256"] == text_sha256(before[cid]["text"])
        assert meta["model_fingerprint"] == report.model_fingerprint
        assert meta["instruction"] == cfg.model.instruction
        assert meta["run_id"] == report.run_id
        assert meta["dimension"] == TINY_DIM and meta["dtype"] == "float32"
        assert isinstance(meta["embedded_at"], datetime)
        assert _plain(v["doc"]) == before[cid]  # other fields untouched

    again = run(cfg, RunOptions())
    assert again.status == "completed"
    assert again.counts.embedded == 0 and again.counts.skipped == total
    after = _snapshot(mongo)
    assert all(after[c]["embedding_meta"]["run_id"] == report.run_id for c in after)  # nothing rewritten


def test_vectors_match_the_parquet_path(mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path) -> None:
    """Same chunks, same model: the MongoDB path stores exactly the Parquet path's vectors."""
    rows = subset(3)
    load_chunks(mongo, rows)
    report = run(mongo_config(mongo, tiny_model(tiny_model_dir), tmp_path / "m"), RunOptions())
    assert report.status == "completed", report.error
    src = write_rows(tmp_path / "in" / "chunks.parquet", rows)
    pq_cfg = make_config(src, tmp_path / "out", model=tiny_model(tiny_model_dir))
    assert run(pq_cfg, RunOptions()).status == "completed"
    expected = vectors_by_id(tmp_path / "out")
    got = {cid: v["vector"] for cid, v in stored(mongo).items()}
    assert set(got) == set(expected)
    assert max(float(np.abs(got[c] - expected[c]).max()) for c in got) <= 1e-6


def test_backfill_separate_collection(mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path) -> None:
    rows = subset(3)
    ids = load_chunks(mongo, rows)
    before = _snapshot(mongo)
    cfg = mongo_config(
        mongo,
        tiny_model(tiny_model_dir),
        tmp_path,
        sink={"collection": "vectors", "mode": "collection", "chunks_collection": "chunks"},
    )
    report = run(cfg, RunOptions())
    assert report.status == "completed", report.error
    assert _snapshot(mongo) == before  # chunk documents untouched
    vecs = stored(mongo, "vectors")
    assert sorted(vecs) == sorted(ids)
    assert mongo.db.vectors.count_documents({}) == len(ids)
    assert_unit([v["vector"] for v in vecs.values()], TINY_DIM)
    by_id = {r["chunk_id"]: r for r in rows}
    for cid, v in vecs.items():
        assert v["doc"]["episode_id"] == by_id[cid]["episode_id"]
        assert v["meta"]["text_sha256"] == text_sha256(by_id[cid]["text"])
    assert "episode_id_1" in mongo.db.vectors.index_information()
    assert run(cfg, RunOptions()).counts.embedded == 0


def test_bad_records_go_to_mongo_dead_letters(mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path) -> None:
    rows = subset(2)
    load_chunks(mongo, rows)
    mongo.db.chunks.insert_many(
        [
            {"_id": "bad-empty", "episode_id": rows[0]["episode_id"], "text": "   "},
            {"_id": "bad-type", "episode_id": rows[0]["episode_id"], "text": 42},
            {"_id": "bad-noep", "text": "a chunk without an episode"},
        ]
    )
    cfg = mongo_config(mongo, tiny_model(tiny_model_dir), tmp_path)
    report = run(cfg, RunOptions())
    assert report.status == "completed"
    assert report.counts.embedded == len(rows) and report.counts.dead_lettered == 3
    letters = {d["chunk_id"]: d for d in mongo.db.podembed_dead_letters.find()}
    assert set(letters) == {"bad-empty", "bad-type", "bad-noep"}
    assert letters["bad-empty"]["field"] == "text" and letters["bad-noep"]["field"] == "episode_id"
    assert all(d["run_id"] == report.run_id and d["first_seen"] == d["last_seen"] for d in letters.values())
    assert mongo.db.chunks.count_documents({"_id": {"$regex": "^bad-"}, "embedding": {"$exists": True}}) == 0
    # Fixing the text clears the letter on the next run; first_seen is kept for the others.
    mongo.db.chunks.update_one({"_id": "bad-empty"}, {"$set": {"text": "Now it has words."}})
    again = run(cfg, RunOptions())
    assert again.counts.embedded == 1 and again.counts.dead_lettered == 2
    left = {d["chunk_id"]: d for d in mongo.db.podembed_dead_letters.find()}
    assert set(left) == {"bad-type", "bad-noep"}
    assert left["bad-type"]["first_seen"] == letters["bad-type"]["first_seen"]
    assert left["bad-type"]["last_seen"] >= letters["bad-type"]["last_seen"]


# --------------------------------------------------------------------------- incremental


def test_incremental_and_reindex_touch_exactly_the_expected_documents(
    mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path
) -> None:
    rows = subset(4)
    load_chunks(mongo, rows)
    cfg = mongo_config(mongo, tiny_model(tiny_model_dir), tmp_path)
    first = run(cfg, RunOptions())
    assert first.counts.embedded == len(rows)

    # Another writer: 3 texts changed, 2 chunks added, an unrelated field set on others.
    changed = [rows[1]["chunk_id"], rows[40]["chunk_id"], rows[80]["chunk_id"]]
    for cid in changed:
        mongo.db.chunks.update_one({"_id": cid}, {"$set": {"text": f"Rewritten text of {cid}."}})
    mongo.db.chunks.update_many(
        {"_id": {"$in": [rows[2]["chunk_id"], rows[3]["chunk_id"]]}}, {"$set": {"editor_note": "checked"}}
    )
    new = [{**rows[0], "chunk_id": f"new-{i}", "text": f"A brand new chunk number {i}."} for i in range(2)]
    load_chunks(mongo, new)
    before = _snapshot(mongo)

    second = run(cfg, RunOptions())
    assert second.counts.embedded == 5 and second.counts.skipped == len(rows) - 3
    after = _snapshot(mongo)
    touched = {c for c in after if after[c]["embedding_meta"]["run_id"] == second.run_id}
    assert touched == set(changed) | {"new-0", "new-1"}
    for cid in after:
        assert _plain(after[cid]) == _plain(before[cid])  # only the vector fields changed
        if cid not in touched:
            assert after[cid]["embedding_meta"] == before[cid]["embedding_meta"]
            assert after[cid]["embedding"] == before[cid]["embedding"]
    rewritten = after[changed[0]]["embedding_meta"]["text_sha256"]
    assert rewritten == text_sha256(f"Rewritten text of {changed[0]}.")

    # reindex --episode: exactly that episode's chunks, server-side.
    episode = rows[50]["episode_id"]
    in_episode = {r["chunk_id"] for r in rows if r["episode_id"] == episode}
    third = run(cfg, RunOptions(command="reindex", force=True, selection=Selection(episode_ids=(episode,))))
    assert third.counts.seen == len(in_episode) and third.counts.embedded == len(in_episode)
    now = _snapshot(mongo)
    assert {c for c in now if now[c]["embedding_meta"]["run_id"] == third.run_id} == in_episode

    # reindex --since: exactly the chunks published on or after the date.
    dates = sorted({r["published_at"] for r in rows})
    since = dates[len(dates) // 2]
    expected = {c for c, d in now.items() if d["published_at"] >= since}
    assert 0 < len(expected) < len(now)
    fourth = run(cfg, RunOptions(command="reindex", force=True, selection=Selection(since=since)))
    assert fourth.counts.embedded == len(expected)
    final = _snapshot(mongo)
    assert {c for c in final if final[c]["embedding_meta"]["run_id"] == fourth.run_id} == expected
    assert all(_plain(final[c]) == _plain(before[c]) for c in final)

    # reindex --podcast on a podcast that is not there: nothing.
    none = run(cfg, RunOptions(command="reindex", force=True, selection=Selection(podcast_ids=("nope",))))
    assert none.counts.seen == 0 and none.shards_total == 0


def test_objectid_and_mixed_ids_write_back_to_the_original_documents(
    mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path
) -> None:
    rows = subset(2)[:40]
    docs = []
    for i, r in enumerate(rows):
        key: Any = ObjectId() if i % 3 == 0 else (1000 + i if i % 3 == 1 else f"s-{i:03d}")
        docs.append({"_id": key, **{k: v for k, v in r.items() if k != "chunk_id"}})
    mongo.db.chunks.insert_many(docs)
    for shard_by in ("episode", "id"):
        mongo.db.chunks.update_many({}, {"$unset": {"embedding": "", "embedding_meta": ""}})
        cfg = mongo_config(
            mongo,
            tiny_model(tiny_model_dir),
            tmp_path / shard_by,
            source={"shard_by": shard_by},
            batching={"window_chunks": 7},
        )
        report = run(cfg, RunOptions())
        assert report.status == "completed", report.error
        assert report.counts.embedded == len(docs) and report.counts.dead_lettered == 0
        assert mongo.db.chunks.count_documents({}) == len(docs)  # nothing upserted under a string id
        for d in mongo.db.chunks.find():
            assert "embedding" in d, d["_id"]
            assert d["embedding_meta"]["text_sha256"] == text_sha256(d["text"])
        assert run(cfg, RunOptions()).counts.skipped == len(docs)
    assert isinstance(mongo.db.chunks.find_one({"_id": docs[0]["_id"]})["_id"], ObjectId)


# --------------------------------------------------------------------------- stale writes


@pytest.mark.parametrize("mode", ["in_place", "collection"])
def test_text_changed_between_read_and_write_is_not_stamped(
    mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path, mode: str
) -> None:
    rows = subset(2)
    load_chunks(mongo, rows)
    victim = rows[5]["chunk_id"]
    new_text = "The host changed this sentence after it was read."
    sink = (
        {}
        if mode == "in_place"
        else {"collection": "vectors", "mode": "collection", "chunks_collection": "chunks"}
    )
    cfg = mongo_config(mongo, tiny_model(tiny_model_dir), tmp_path, sink=sink)
    coll = "chunks" if mode == "in_place" else "vectors"

    def other_writer(result: BatchResult) -> None:
        if victim in result.chunk_ids:
            mongo.db.chunks.update_one({"_id": victim}, {"$set": {"text": new_text}})

    sinks: list[Any] = []
    executor = HookExecutor(open_executor(cfg), on_result=other_writer)
    report = run(cfg, RunOptions(), executor=executor, on_parts=lambda p: sinks.append(p.sink))
    assert report.status == "completed", report.error
    vecs = stored(mongo, coll)
    assert victim not in vecs  # the vector of the old text was not written
    assert len(vecs) == len(rows) - 1
    assert sinks[0].stale_dropped == 1
    again = run(cfg, RunOptions())
    assert again.counts.embedded == 1
    assert stored(mongo, coll)[victim]["meta"]["text_sha256"] == text_sha256(new_text)


def test_collection_mode_withdraws_a_vector_whose_text_changed_during_the_write(
    mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path
) -> None:
    """The race between the sink's text check and its write: caught by the re-check after."""
    rows = subset(1)
    load_chunks(mongo, rows)
    victim = rows[3]["chunk_id"]
    cfg = mongo_config(
        mongo,
        tiny_model(tiny_model_dir),
        tmp_path,
        sink={"collection": "vectors", "mode": "collection", "chunks_collection": "chunks"},
    )
    sinks: list[Any] = []

    def race(parts: Any) -> None:
        sink = parts.sink
        sinks.append(sink)
        real = sink._bulk

        def bulk(ops: list[Any], what: str) -> Any:
            mongo.db.chunks.update_one({"_id": victim}, {"$set": {"text": "Edited mid-write."}})
            return real(ops, what)

        sink._bulk = bulk

    report = run(cfg, RunOptions(), on_parts=race)
    assert report.status == "completed", report.error
    assert victim not in stored(mongo, "vectors")
    assert sinks[0].stale_dropped == 1
    assert len(stored(mongo, "vectors")) == len(rows) - 1


# --------------------------------------------------------------------------- concurrency


def test_two_runs_at_once_share_the_work_and_never_embed_a_chunk_twice(
    mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path
) -> None:
    rows = subset(3)
    load_chunks(mongo, rows)
    results: dict[str, Any] = {}
    barrier = threading.Barrier(2)

    def go(name: str) -> None:
        cfg = mongo_config(mongo, tiny_model(tiny_model_dir), tmp_path / name)
        executor = HookExecutor(open_executor(cfg), delay=0.05)
        barrier.wait()
        results[name] = run(cfg, RunOptions(), executor=executor)

    threads = [threading.Thread(target=go, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    reports = list(results.values())
    assert len(reports) == 2 and all(r.status == "completed" for r in reports), results
    # Neither is refused; between them every chunk is embedded exactly once.
    assert sum(r.counts.embedded for r in reports) == len(rows)
    assert {v["meta"]["run_id"] for v in stored(mongo).values()} <= {r.run_id for r in reports}
    assert len(stored(mongo)) == len(rows)
    assert mongo.db.podembed_claims.count_documents({}) == 0  # released
    assert mongo.db.podembed_owners.count_documents({}) == 0


def test_status_by_query(mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path) -> None:
    from pipeline.parts import open_parts
    from pipeline.reporting.status import coverage

    rows = subset(2)
    load_chunks(mongo, rows)
    cfg = mongo_config(mongo, tiny_model(tiny_model_dir), tmp_path)
    run(cfg, RunOptions(limit=10))
    had_vector = "embedding" in mongo.db.chunks.find_one({"_id": rows[0]["chunk_id"]})
    mongo.db.chunks.update_one({"_id": rows[0]["chunk_id"]}, {"$set": {"text": "Changed."}})
    mongo.db.chunks.insert_one({"_id": "bad", "episode_id": "x", "text": ""})
    parts = open_parts(cfg)
    try:
        cov = coverage(cfg, parts)
        assert parts.sink.fingerprint_counts() == {cov.fingerprint: 10}
    finally:
        parts.close()
    assert cov.total == len(rows) + 1 and cov.invalid == 1
    assert cov.current + cov.stale_text == 10 and cov.stale_text == int(had_vector)
    assert cov.missing == len(rows) - 10
    assert cov.last_runs and cov.last_runs[0]["command"] == "backfill"


def test_config_errors_name_the_key(mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path) -> None:
    from pipeline.config import parse_config
    from pipeline.errors import ConfigError, SourceError
    from pipeline.parts import open_parts
    from tests.mongo_fixtures import mongo_raw

    bad = mongo_raw(mongo, tiny_model(tiny_model_dir), tmp_path)
    bad["sink"]["vectorfield"] = "x"
    with pytest.raises(ConfigError, match=r"sink\.vectorfield: unknown key"):
        parse_config(bad)
    bad = mongo_raw(mongo, tiny_model(tiny_model_dir), tmp_path, sink={"mode": "collection"})
    with pytest.raises(ConfigError, match=r"sink\.chunks_collection: required"):
        parse_config(bad)
    cfg = mongo_config(mongo, tiny_model(tiny_model_dir), tmp_path)  # no collection yet
    with pytest.raises(SourceError, match="no collection 'chunks'"):
        open_parts(cfg)
    load_chunks(mongo, subset(1))
    cfg = mongo_config(
        mongo, tiny_model(tiny_model_dir), tmp_path, fields={"text": "body"}, sink={"text_field": "body"}
    )
    with pytest.raises(SourceError, match=r"source\.fields\.text: field 'body' not found"):
        open_parts(cfg)


def test_plan_is_stable_and_server_side(mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path) -> None:
    from pipeline.parts import open_source

    rows = subset(5)
    load_chunks(mongo, rows)
    cfg = mongo_config(mongo, tiny_model(tiny_model_dir), tmp_path, batching={"window_chunks": 40})
    source = open_source(cfg)
    try:
        shards = source.plan(Selection())
        assert [s.shard_id for s in shards] == [s.shard_id for s in source.plan(Selection())]
        assert sum(s.estimated_chunks for s in shards) == len(rows)
        assert all(s.estimated_chunks <= 40 or len(s.locator["episodes"]) == 1 for s in shards)
        seen = [r.fields["chunk_id"] for s in shards for r in source.read(s, Selection())]
        assert sorted(seen) == sorted(r["chunk_id"] for r in rows)
        podcast = rows[0]["podcast_id"]
        sel = Selection(podcast_ids=(podcast,))
        picked = [r.fields["chunk_id"] for s in source.plan(sel) for r in source.read(s, sel)]
        assert sorted(picked) == sorted(r["chunk_id"] for r in rows if r["podcast_id"] == podcast)
        # An episode that gains a chunk changes its shard's id (a resumed run redoes it).
        first_ep = shards[0].locator["episodes"][0]
        load_chunks(mongo, [{**rows[0], "chunk_id": "extra", "episode_id": first_ep}])
        assert source.plan(Selection())[0].shard_id != shards[0].shard_id
        # A big episode is split into _id ranges.
        source.window = 10
        big = source.plan(Selection(episode_ids=(rows[0]["episode_id"],)))
        assert len(big) > 1 and all(s.estimated_chunks <= 10 for s in big)
        got = [r.fields["chunk_id"] for s in big for r in source.read(s, Selection())]
        in_episode = sum(1 for r in rows if r["episode_id"] == rows[0]["episode_id"]) + 1
        assert len(got) == len(set(got)) == in_episode
        assert source.existing_ids(["extra", "nope", rows[1]["chunk_id"]]) == {"extra", rows[1]["chunk_id"]}
    finally:
        source.close()


def test_since_uses_dates(mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path) -> None:
    from pipeline.parts import open_source

    rows = subset(3)
    load_chunks(mongo, rows)
    since = datetime(2025, 6, 1, tzinfo=UTC)
    cfg = mongo_config(mongo, tiny_model(tiny_model_dir), tmp_path)
    source = open_source(cfg)
    try:
        sel = Selection(since=since)
        got = {r.fields["chunk_id"] for s in source.plan(sel) for r in source.read(s, sel)}
    finally:
        source.close()
    assert got == {r["chunk_id"] for r in rows if r["published_at"] >= since}


def test_query_filter_and_prune_unset_vectors_of_chunks_that_left_the_source(
    mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path
) -> None:
    rows = subset(1)
    load_chunks(mongo, rows)
    mongo.db.chunks.insert_one(
        {"_id": "draft", "episode_id": rows[0]["episode_id"], "text": "Draft.", "status": "draft"}
    )
    cfg = mongo_config(
        mongo, tiny_model(tiny_model_dir), tmp_path, source={"query": {"status": {"$ne": "draft"}}}
    )
    first = run(cfg, RunOptions())
    assert first.counts.seen == len(rows) and "draft" not in stored(mongo)
    retracted = rows[2]["chunk_id"]
    mongo.db.chunks.update_one({"_id": retracted}, {"$set": {"status": "draft"}})
    report = run(cfg, RunOptions())
    assert report.counts.removed == 1 and report.counts.pruned == 0
    pruned = run(cfg, RunOptions(prune=True))
    assert pruned.counts.removed == 1 and pruned.counts.pruned == 1
    doc = mongo.db.chunks.find_one({"_id": retracted})
    assert "embedding" not in doc and "embedding_meta" not in doc and doc["text"] == rows[2]["text"]
    assert len(stored(mongo)) == len(rows) - 1
