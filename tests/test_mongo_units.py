# ruff: noqa: F811  (pytest fixtures imported from tests.mongo_fixtures are redefined as arguments)
"""MongoDB parts one by one against a real server: secrets, ids, the lease, the ledger, the sink."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from bson import ObjectId
from bson.binary import Binary

from pipeline.errors import ConfigError, LockedError, TargetError
from pipeline.mongo.connection import redact_uri, scrub
from pipeline.mongo.ledger import MongoCheckpointOptions, MongoCheckpointStore
from pipeline.mongo.sink import MongoSink, MongoSinkOptions
from pipeline.mongo.values import id_candidates, id_to_str
from pipeline.records import Chunk, DeadLetter, VectorRecord, text_sha256
from pipeline.toml_schema import from_table
from tests.mongo_fixtures import URI_ENV, MongoEnv, mongo, mongo_server  # noqa: F401 - fixtures

# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (
            "mongodb://app:s3cret@db1:27017/podcasts?authSource=admin",
            "mongodb://app:***@db1:27017/podcasts?authSource=admin",
        ),
        (
            "mongodb+srv://app:p%40ss%2Fw0rd@cluster0.example.net/?retryWrites=true",
            "mongodb+srv://app:***@cluster0.example.net/?retryWrites=true",
        ),
        (
            "mongodb://app:raw@with/slash@h1:1,h2:2/?replicaSet=rs0",
            "mongodb://app:***@h1:1,h2:2/?replicaSet=rs0",
        ),
        ("mongodb://h1:27017/", "mongodb://h1:27017/"),
        ("mongodb://user@h1/?authMechanism=MONGODB-X509", "mongodb://user@h1/?authMechanism=MONGODB-X509"),
        (
            "mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:tok123",
            "mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties=***",
        ),
    ],
)
def test_redact_uri(uri: str, expected: str) -> None:
    assert redact_uri(uri) == expected


def test_scrub_masks_uris_and_decoded_passwords() -> None:
    uri = "mongodb://app:p%40ss%2Fw0rd@db1/"
    text = f"failed to reach {uri}: auth failed for p@ss/w0rd (raw p%40ss%2Fw0rd)"
    clean = scrub(text, uri)
    assert "p@ss/w0rd" not in clean and "p%40ss%2Fw0rd" not in clean
    assert "mongodb://app:***@db1/" in clean


def test_id_candidates_round_trip_typed_ids() -> None:
    oid = ObjectId()
    assert id_candidates(str(oid)) == [str(oid), oid]
    assert id_candidates("1234") == ["1234", 1234]
    assert id_candidates("007") == ["007"]  # not the string form of an int
    u = uuid.uuid4()
    cands = id_candidates(str(u))
    assert cands[0] == str(u) and isinstance(cands[1], Binary)
    assert id_candidates("pc-astro-ep01-c0000") == ["pc-astro-ep01-c0000"]
    assert id_to_str(oid) == str(oid) and id_to_str(5) == 5 and id_to_str(u) == str(u)


def test_missing_uri_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PODEMBED_NOPE", raising=False)
    table = {"uri_env": "PODEMBED_NOPE", "database": "d", "collection": "c"}
    opts = from_table(MongoSinkOptions, table, "sink")
    with pytest.raises(ConfigError, match="PODEMBED_NOPE is not set"):
        MongoSink.open(opts, 4)


# --------------------------------------------------------------------------- the lease


def _store(env: MongoEnv, **kw: Any) -> MongoCheckpointStore:
    sink_opts = from_table(
        MongoSinkOptions, {"uri_env": URI_ENV, "database": env.database, "collection": "chunks"}, "sink"
    )
    opts = from_table(MongoCheckpointOptions, {"lease_ttl_s": 1.5, **kw}, "checkpoint")
    return MongoCheckpointStore.open(opts, MongoSink.home(sink_opts))


def test_lease_excludes_others_expires_after_a_crash_and_detects_loss(mongo: MongoEnv) -> None:
    a, b = _store(mongo), _store(mongo)
    try:
        a.acquire("run-a")
        with pytest.raises(LockedError, match="run-a"):
            b.acquire("run-b")
        # The background heartbeat keeps a live lease alive past its TTL.
        time.sleep(2.0)
        with pytest.raises(LockedError):
            b.acquire("run-b")
        # "Crash" a: its heartbeat stops; the lease expires and b takes over.
        a._stop.set()
        a._thread.join()  # type: ignore[union-attr]
        time.sleep(1.7)
        b.acquire("run-b")
        lock = mongo.db.podembed_locks.find_one()
        assert lock["owner"] == "run-b" and lock["_id"] == f"{mongo.database}.chunks.embedding"
        # a comes back: it learns it lost the lease and stops writing.
        with pytest.raises(LockedError, match="lost the lease"):
            a.heartbeat()
        with pytest.raises(LockedError):
            a.mark_shard_done("r", "s", {})
        a.release()  # not the owner: b keeps the lock
        assert mongo.db.podembed_locks.find_one()["owner"] == "run-b"
        b.heartbeat()
        b.release()
        assert mongo.db.podembed_locks.count_documents({}) == 0
    finally:
        a.close()
        b.close()


def test_lock_wait_takes_the_target_when_it_frees(mongo: MongoEnv) -> None:
    a, b = _store(mongo), _store(mongo, lock_wait_s=10.0)
    try:
        a.acquire("run-a")
        started = time.monotonic()
        import threading

        threading.Timer(0.8, a.release).start()
        b.acquire("run-b")
        assert 0.7 < time.monotonic() - started < 8
        assert mongo.db.podembed_locks.find_one()["owner"] == "run-b"
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------- ledger and dead letters


def test_ledger_and_dead_letters(mongo: MongoEnv) -> None:
    s = _store(mongo)
    other = _store(mongo, target="another-target")
    try:
        assert s.find_resumable("k1") is None
        s.start_run("r1", "k1", "backfill", {"shards": 3})
        s.mark_shard_done("r1", "ep-1", {"embedded": 5})
        s.mark_shard_done("r1", "ep-1", {"embedded": 5})  # idempotent
        s.mark_shard_done("r1", "ep/2", {"embedded": 1})
        assert s.done_shards("r1") == {"ep-1", "ep/2"}
        assert s.find_resumable("k1") == "r1" and other.find_resumable("k1") is None
        s.start_run("r1", "k1", "backfill", {"shards": 3})  # resumed
        s.finish_run("r1", "completed", {"counts": {"embedded": 6}, "odd": {1: datetime.now(UTC)}})
        assert s.find_resumable("k1") is None
        runs = s.last_runs()
        assert runs[0]["run_id"] == "r1" and runs[0]["status"] == "completed"
        assert runs[0]["report"]["counts"]["embedded"] == 6
        assert mongo.db.podembed_runs.find_one({"_id": "r1"})["attempts"] == 2
        assert other.last_runs() == []

        s.add_dead_letters(
            "r1",
            [DeadLetter("c1", "text", "empty", "e1", "h1"), DeadLetter("c2", "embedding", "nan", "e1", "h2")],
        )
        first = s.dead_letters(["c1", "c2", "c3"])
        assert set(first) == {"c1", "c2"} and first["c2"].field == "embedding"
        time.sleep(0.01)
        s.add_dead_letters("r2", [DeadLetter("c1", "text", "still empty", "e1", "h1")])
        again = s.dead_letters(["c1"])["c1"]
        assert again.first_seen == first["c1"].first_seen and again.last_seen > first["c1"].last_seen
        assert again.run_id == "r2" and again.reason == "still empty"
        assert s.count_dead_letters() == 2 and other.count_dead_letters() == 0
        assert [d.chunk_id for d in s.list_dead_letters()] == ["c1", "c2"]
        assert len(s.list_dead_letters(1)) == 1
        s.clear_dead_letters(["c1"])
        assert s.count_dead_letters() == 1
    finally:
        s.close()
        other.close()


# --------------------------------------------------------------------------- the sink


def _sink(env: MongoEnv, dim: int = 4, **kw: Any) -> MongoSink:
    opts = from_table(
        MongoSinkOptions, {"uri_env": URI_ENV, "database": env.database, "collection": "chunks", **kw}, "sink"
    )
    return MongoSink.open(opts, dim)


def _record(cid: str, text: str, vec: list[float], run_id: str = "r1") -> VectorRecord:
    return VectorRecord(
        chunk_id=cid,
        episode_id="e1",
        embedding=np.asarray(vec, dtype=np.float32),
        text_sha256=text_sha256(text),
        model_fingerprint="fp",
        instruction="Represent:",
        embedded_at=datetime.now(UTC),
        run_id=run_id,
        text=text,
    )


def test_sink_writes_idempotently_and_reads_state_without_vectors(mongo: MongoEnv) -> None:
    oid = ObjectId()
    mongo.db.chunks.insert_many(
        [
            {"_id": "a", "episode_id": "e1", "text": "alpha", "keep": 1},
            {"_id": oid, "episode_id": "e1", "text": "beta"},
            {"_id": 7, "episode_id": "e1", "text": "gamma"},
        ]
    )
    sink = _sink(mongo)
    _sink(mongo).close()  # indexes are created idempotently
    try:
        recs = [
            _record("a", "alpha", [1, 0, 0, 0]),
            _record(str(oid), "beta", [0, 1, 0, 0]),
            _record("7", "gamma", [0, 0, 1, 0]),
            _record("missing", "x", [0, 0, 0, 1]),
        ]
        assert sink.write(recs) == 3 and sink.missing_skipped == 1
        assert sink.write(recs[:3] + recs[:3]) == 3  # repeated batch: same documents, no growth
        assert mongo.db.chunks.count_documents({}) == 3
        chunks = [Chunk("a", "e1", "alpha"), Chunk(str(oid), "e1", "beta"), Chunk("zz", "e1", "q")]
        states = sink.lookup(chunks)
        assert set(states) == {"a", str(oid)} and states["a"].text_sha256 == text_sha256("alpha")
        assert sorted(s.chunk_id for s in sink.iter_states()) == sorted(["a", str(oid), "7"])
        vecs = sink.read_vectors()
        assert vecs[str(oid)].tolist() == [0, 1, 0, 0] and vecs["a"].dtype == np.float32
        assert mongo.db.chunks.find_one({"_id": "a"})["keep"] == 1
        assert sink.coverage() == {"fp": 3}
        with pytest.raises(TargetError, match="expects 4"):
            sink.write([_record("a", "alpha", [1, 0, 0])])
        with pytest.raises(TargetError, match="non-finite"):
            sink.write([_record("a", "alpha", [np.nan, 0, 0, 0])])
        assert sink.delete(["a", "7", "nope"]) == 2
        doc = mongo.db.chunks.find_one({"_id": "a"})
        assert "embedding" not in doc and "embedding_meta" not in doc and doc["text"] == "alpha"
    finally:
        sink.close()


def test_collection_sink_deletes_vector_documents(mongo: MongoEnv) -> None:
    mongo.db.chunks.insert_many([{"_id": "a", "text": "alpha"}, {"_id": "b", "text": "beta"}])
    sink = _sink(mongo, collection="vectors", mode="collection", chunks_collection="chunks")
    try:
        assert sink.write([_record("a", "alpha", [1, 0, 0, 0]), _record("b", "changed", [0, 1, 0, 0])]) == 1
        assert sink.stale_dropped == 1
        assert [d["_id"] for d in mongo.db.vectors.find()] == ["a"]
        assert sink.delete(["a"]) == 1 and mongo.db.vectors.count_documents({}) == 0
        assert mongo.db.chunks.count_documents({}) == 2
    finally:
        sink.close()
