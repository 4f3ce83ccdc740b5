# ruff: noqa: F811  (pytest fixtures imported from tests.mongo_fixtures are redefined as arguments)
"""Issue 19 over the wire (SecantusDB): a document MongoDB refuses is one dead letter, not a failed night."""

from __future__ import annotations

from pathlib import Path

import bson

from pipeline.engine.options import RunOptions
from pipeline.engine.runner import run
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

SIXTEEN_MIB = 16 * 1024 * 1024


def test_a_document_mongodb_refuses_is_a_dead_letter_and_the_run_goes_on(
    mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path
) -> None:
    """Issue 19.2: a chunk document near 16 MiB failed every run (code 10334 on the in-place
    write), naming neither chunk nor cause; the report said 0 embedded though some were written."""
    rows = subset(3)
    ids = load_chunks(mongo, rows)
    # Just under the limit: the vector and its metadata push it over (server code 10334).
    big = ids[len(ids) // 2]
    doc = mongo.db.chunks.find_one({"_id": big})
    room = SIXTEEN_MIB - len(bson.encode(doc)) - len(bson.encode({"padding": ""})) - 64
    mongo.db.chunks.update_one({"_id": big}, {"$set": {"padding": "x" * room}})
    cfg = mongo_config(mongo, tiny_model(tiny_model_dir), tmp_path)

    report = run(cfg, RunOptions())

    assert report.status == "completed", report.error
    vectors = stored(mongo)
    assert set(vectors) == set(ids) - {big}  # every other chunk got its vector
    assert report.counts.embedded == len(ids) - 1 == len(vectors)  # the report's counts are true
    assert report.counts.dead_lettered == 1 and report.counts.stale_dropped == 0
    (letter,) = list(mongo.db.podembed_dead_letters.find())
    assert letter["chunk_id"] == big and letter["field"] == "sink"
    assert "10334" in letter["reason"] and "16777216" in letter["reason"]

    # Once the document is small again, the next run writes it and clears the letter.
    mongo.db.chunks.update_one({"_id": big}, {"$unset": {"padding": ""}})
    again = run(cfg, RunOptions())
    assert again.status == "completed" and again.counts.embedded == 1 and again.counts.dead_lettered == 0
    assert set(stored(mongo)) == set(ids)
    assert mongo.db.podembed_dead_letters.count_documents({}) == 0


def test_a_refused_document_in_a_separate_collection_is_a_dead_letter(
    mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path
) -> None:
    """Any per-document error of a bulk write (here a unique index the operator added on the
    vectors collection: E11000) costs that chunk only, with the server's reason."""
    rows = subset(2)
    ids = load_chunks(mongo, rows)
    episodes = {r["episode_id"] for r in rows}
    mongo.db.vectors.create_index("episode_id", unique=True)  # one vector per episode, at most
    sink = {"mode": "collection", "collection": "vectors", "chunks_collection": "chunks"}
    cfg = mongo_config(mongo, tiny_model(tiny_model_dir), tmp_path, sink=sink)

    report = run(cfg, RunOptions())

    assert report.status == "completed", report.error
    written = stored(mongo, collection="vectors")
    assert len(written) == len(episodes) == report.counts.embedded
    assert report.counts.dead_lettered == len(ids) - len(episodes)
    letters = list(mongo.db.podembed_dead_letters.find())
    assert {d["chunk_id"] for d in letters} == set(ids) - set(written)
    assert all(d["field"] == "sink" and "11000" in d["reason"] for d in letters)
