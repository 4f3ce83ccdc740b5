# ruff: noqa: F811  (pytest fixtures imported from tests.mongo_fixtures are redefined as arguments)
"""MongoDB parts one by one against a real server: secrets, ids, claims, the ledger, the sink."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from bson import ObjectId
from bson.binary import Binary

from pipeline.engine.liveness import current
from pipeline.errors import ConfigError, TargetError
from pipeline.interfaces.checkpoint import Holder
from pipeline.mongo.connection import redact_uri, scrub
from pipeline.mongo.ledger import MongoCheckpointOptions, MongoCheckpointStore
from pipeline.mongo.sink import MongoSink
from pipeline.mongo.sink_options import MongoSinkOptions
from pipeline.mongo.values import id_candidates, id_to_str
from pipeline.records import Chunk, DeadLetter, VectorRecord, text_sha256
from pipeline.toml_schema import from_table
from tests.mongo_fixtures import URI_ENV, MongoEnv, mongo, mongo_server, mongo_vectors  # noqa: F401 - fixtures

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


# --------------------------------------------------------------------------- claims


def _store(env: MongoEnv, **kw: Any) -> MongoCheckpointStore:
    sink_opts = from_table(
        MongoSinkOptions, {"uri_env": URI_ENV, "database": env.database, "collection": "chunks"}, "sink"
    )
    opts = from_table(MongoCheckpointOptions, {"lease_ttl_s": 1.5, **kw}, "checkpoint")
    return MongoCheckpointStore.open(opts, MongoSink.home(sink_opts))


def _dead_pid() -> int:
    """The PID of a process that has ended (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_claims_are_exclusive_renewed_and_taken_over_from_expired_or_dead_runs(mongo: MongoEnv) -> None:
    a, b = _store(mongo), _store(mongo)
    claims = mongo.db.podembed_claims
    try:
        a.register("owner-a", "backfill", "all")
        a.start_run("run-a", "k", "backfill", {})
        assert a.claim(["e1", "e2"]) == {}
        assert a.claim(["e1"]) == {}  # ours already
        b.register("owner-b", "ingest", "episode=e1")
        assert b.claim(["e1", "e3"]) == {"e1": Holder("owner-a", "run-a", "backfill")}
        assert claims.find_one({"unit": "e3"})["owner"] == "owner-b"
        doc = claims.find_one({"unit": "e1"})
        assert (
            doc["_id"] == f"{mongo.database}.chunks.embedding\x1fe1" and doc["process"]["pid"] == os.getpid()
        )

        # The heartbeat moves the expiry of the run and of every claim it holds.
        before = claims.find_one({"unit": "e2"})["expires_at"]
        a._renew()
        assert claims.find_one({"unit": "e2"})["expires_at"] >= before
        live = {r.owner: r for r in b.live_runs()}
        assert live["owner-a"].claims == ["e1", "e2"] and live["owner-a"].run_id == "run-a"
        assert live["owner-b"].claims == ["e3"]

        # a "crashes" on another machine (no heartbeat, its expiry passes): b takes e1 over.
        a._stop.set()
        past = datetime(2000, 1, 1, tzinfo=UTC)
        claims.update_many({"owner": "owner-a"}, {"$set": {"expires_at": past, "process.host": "elsewhere"}})
        mongo.db.podembed_owners.update_one({"_id": "owner-a"}, {"$set": {"expires_at": past}})
        assert b.claim(["e1"]) == {}
        assert claims.find_one({"unit": "e1"})["owner"] == "owner-b"
        assert [r.owner for r in b.live_runs()] == ["owner-b"]  # the dead run's documents are gone
        assert claims.count_documents({"owner": "owner-a"}) == 0
        a._renew()  # a comes back: it notices the loss, and its release leaves b's claim alone
        assert a._lost == {"e1", "e2"}
        a.release_claims(["e1"])
        assert claims.find_one({"unit": "e1"})["owner"] == "owner-b"
        assert sorted(r.owner for r in b.live_runs()) == ["owner-a", "owner-b"]  # alive again
        a.unregister()

        # A claim held for 10 minutes more by a process of this machine that is gone: taken at once.
        claims.insert_one(
            {
                "_id": f"{mongo.database}.chunks.embedding\x1fe9",
                "target": f"{mongo.database}.chunks.embedding",
                "unit": "e9",
                "owner": "owner-killed",
                "run_id": "run-killed",
                "command": "backfill",
                "expires_at": datetime.now(UTC) + timedelta(minutes=10),
                "process": {**current().to_dict(), "pid": _dead_pid(), "start_ticks": 1},
            }
        )
        assert b.claim(["e9"]) == {}
        assert claims.find_one({"unit": "e9"})["owner"] == "owner-b"
        b.unregister()
        assert claims.count_documents({}) == 0 and mongo.db.podembed_owners.count_documents({}) == 0
    finally:
        a.close()
        b.close()


def test_a_run_is_resumed_only_once_its_owner_is_gone(mongo: MongoEnv) -> None:
    a, b, c = _store(mongo), _store(mongo), _store(mongo)
    try:
        a.register("owner-a", "backfill", "all")
        a.start_run("run-a", "k", "backfill", {})
        b.register("owner-b", "backfill", "all")
        assert b.find_resumable("k") is None  # run-a is alive: b starts its own run
        a._stop.set()
        mongo.db.podembed_owners.update_one(
            {"_id": "owner-a"}, {"$set": {"expires_at": datetime(2000, 1, 1, tzinfo=UTC)}}
        )
        assert b.find_resumable("k") == "run-a"
        assert mongo.db.podembed_runs.find_one({"_id": "run-a"})["owner"] == "owner-b"
        c.register("owner-c", "backfill", "all")
        assert c.find_resumable("k") is None  # b holds it now
    finally:
        a.close()
        b.close()
        c.close()


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
        vecs = mongo_vectors(sink)
        assert vecs[str(oid)].tolist() == [0, 1, 0, 0] and vecs["a"].dtype == np.float32
        assert mongo.db.chunks.find_one({"_id": "a"})["keep"] == 1
        assert sink.fingerprint_counts() == {"fp": 3}
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


def test_an_episode_shard_is_read_through_the_episode_index(mongo: MongoEnv) -> None:
    """A shard read is one indexed ``$in`` (the test server's planner scans the whole
    collection for an ``$and``/``$expr`` filter: a backfill of n/window shards was O(n²));
    a document whose episode field is an array holding the shard's episode still is not
    read by that shard (it belongs to the invalid-episode-id shard)."""
    from pipeline.config import FieldMap
    from pipeline.engine.selection import Selection
    from pipeline.mongo.source import MongoSource, MongoSourceOptions

    docs = [{"_id": f"c{i:03d}", "episode_id": f"e{i // 10}", "text": f"chunk {i}"} for i in range(60)]
    docs.append({"_id": "evil", "episode_id": ["e1", "e2"], "text": "array episode"})
    mongo.db["chunks"].insert_many(docs)
    opts = from_table(
        MongoSourceOptions, {"uri_env": URI_ENV, "database": mongo.database, "collection": "chunks"}, "source"
    )
    source = MongoSource.open(opts, FieldMap(chunk_id="_id"), window_chunks=25)
    try:
        shards = [s for s in source.plan(Selection()) if "episodes" in s.locator]
        assert len(shards) == 3
        read: list[str] = []
        for shard in shards:
            flt = source._read_filter(shard, Selection())
            plan = source.collection.find(flt).explain()["queryPlanner"]["winningPlan"]
            assert plan.get("inputStage", {}).get("stage") == "IXSCAN", plan
            assert plan["inputStage"]["indexName"].startswith("episode_id"), plan
            read += [r.fields["chunk_id"] for r in source.read(shard, Selection())]
        assert sorted(read) == [d["_id"] for d in docs[:60]]  # each once, never the array document
    finally:
        source.close()
