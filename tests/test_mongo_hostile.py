# ruff: noqa: F811  (pytest fixtures imported from tests.mongo_fixtures are redefined as arguments)
"""Hostile MongoDB documents and URIs, over the wire on SecantusDB.

Values read from the data are data: an episode id that looks like a query operator,
a BSON regex, an array or an object is never put into a query, it is dead-lettered
once with a reason; typed ids that collide in their string form (``1`` and ``"1"``)
are duplicates; a malformed URI is a config error (exit 2) that names the key.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId, Regex
from bson.binary import Binary, UuidRepresentation

from pipeline.engine.options import RunOptions
from pipeline.engine.runner import run
from pipeline.engine.selection import Selection
from pipeline.parts import open_parts, open_source
from pipeline.reporting.planning import make_plan
from pipeline.reporting.status import coverage
from tests.helpers import ROOT
from tests.mongo_fixtures import (  # noqa: F401 - fixtures
    URI_ENV,
    MongoEnv,
    cli_env,
    load_chunks,
    mongo,
    mongo_config,
    mongo_raw,
    mongo_server,
    stored,
    subset,
    tiny_model,
    to_toml,
)


def _status(cfg: Any) -> Any:
    parts = open_parts(cfg)
    try:
        return coverage(cfg, parts)
    finally:
        parts.close()


def _plan(cfg: Any, selection: Selection | None = None) -> Any:
    parts = open_parts(cfg)
    try:
        return make_plan(cfg, parts, RunOptions(command="plan", selection=selection or Selection()))
    finally:
        parts.close()


def _hostile_episodes(episode: str) -> dict[str, Any]:
    """chunk id -> an episode id value no query may ever see as syntax."""
    return {
        "evil-gt": {"$gt": ""},  # an operator: "cannot nest $ under $in" / matches everything
        "evil-ne": {"$ne": None},
        "evil-regex": Regex(".*"),  # a pattern that matches every string episode
        "evil-regex-ep": Regex("^" + episode[:3]),
        "evil-array": [episode],  # an array matches its elements in a find
        "evil-array2": [episode, "other"],
        "evil-doc": {"id": episode},
        "evil-float": 5.5,
        "evil-bool": True,
        "evil-null": None,
    }


# --------------------------------------------------------------------------- E1 + E2


@pytest.mark.parametrize("window", [32, 8])  # 8: every good episode is split into _id ranges
def test_hostile_episode_ids_are_dead_lettered_once_and_never_queried(
    mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path, window: int
) -> None:
    rows = subset(2)
    load_chunks(mongo, rows)
    episode = rows[0]["episode_id"]
    evil = _hostile_episodes(episode)
    mongo.db.chunks.insert_many(
        [{"_id": cid, "episode_id": ep, "text": f"Hostile chunk {cid}."} for cid, ep in evil.items()]
    )
    mongo.db.chunks.insert_one({"_id": "evil-missing", "text": "No episode field at all."})
    bad = set(evil) | {"evil-missing"}
    total = len(rows) + len(bad)
    cfg = mongo_config(mongo, tiny_model(tiny_model_dir), tmp_path, batching={"window_chunks": window})

    # plan and status run (they used to fail with "cannot nest $ under $in") and count each document once.
    plan = _plan(cfg)
    assert plan.seen == total and plan.invalid == len(bad) and plan.to_embed == len(rows)
    before = _status(cfg)
    assert before.total == total and before.invalid == len(bad) and before.missing == len(rows)

    report = run(cfg, RunOptions())
    assert report.status == "completed", report.error
    assert report.counts.seen == total  # no document read twice (regex/array used to match good episodes)
    assert report.counts.embedded == len(rows) and report.counts.dead_lettered == len(bad)
    assert sorted(stored(mongo)) == sorted(r["chunk_id"] for r in rows)
    letters = {d["chunk_id"]: d for d in mongo.db.podembed_dead_letters.find()}
    assert set(letters) == bad
    assert {d["field"] for d in letters.values()} == {"episode_id"}
    assert (
        "object" in letters["evil-gt"]["reason"] and "regular expression" in letters["evil-regex"]["reason"]
    )
    assert "array" in letters["evil-array"]["reason"] and "missing" in letters["evil-missing"]["reason"]

    after = _status(cfg)
    assert after.total == total and after.valid == len(rows) and after.current == len(rows)
    again = run(cfg, RunOptions())
    assert again.counts.seen == total and again.counts.embedded == 0 and again.counts.skipped == len(rows)

    # A selection by episode still matches literally and reads each document once.
    sel = Selection(episode_ids=(episode,))
    picked = _plan(cfg, sel)
    in_episode = sum(1 for r in rows if r["episode_id"] == episode)
    # The two array documents contain the episode: read once (in the invalid-id shard), dead-lettered.
    assert picked.seen == in_episode + 2 and picked.invalid == 2


def test_regex_episode_id_is_not_a_pattern(mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path) -> None:
    rows = subset(2)
    load_chunks(mongo, rows)
    mongo.db.chunks.insert_one({"_id": "evil-regex", "episode_id": Regex(".*"), "text": "A pattern."})
    # A regex sorts after strings: it gets a shard of its own, apart from the good episodes.
    # No index on episode_id: SecantusDB's index lookup treats a regex in $in as a plain
    # value, its collection scan (like MongoDB, always) treats it as a pattern.
    cfg = mongo_config(
        mongo,
        tiny_model(tiny_model_dir),
        tmp_path,
        batching={"window_chunks": 16},
        source={"create_indexes": False},
    )
    report = run(cfg, RunOptions())
    # That shard's {"$in": [regex]} used to match every string episode: each good chunk read twice.
    assert report.counts.seen == len(rows) + 1
    assert report.counts.embedded == len(rows) and report.counts.dead_lettered == 1
    cov = _status(cfg)
    assert cov.total == len(rows) + 1 and cov.current == cov.valid == len(rows)


def test_shard_locators_hold_only_scalar_episode_values(
    mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path
) -> None:
    rows = subset(1)
    load_chunks(mongo, rows)
    mongo.db.chunks.insert_many(
        [{"_id": f"bad-{i}", "episode_id": {"$gt": ""}, "text": "x"} for i in range(5)]
        + [{"_id": "oid-ep", "episode_id": ObjectId(), "text": "An ObjectId episode is fine."}]
    )
    cfg = mongo_config(mongo, tiny_model(tiny_model_dir), tmp_path, batching={"window_chunks": 2})
    source = open_source(cfg)
    try:
        shards = source.plan(Selection())
        episodes = [e for s in shards for e in s.locator.get("episodes", [])]
        for e in episodes:
            assert isinstance(e, str) or (
                isinstance(e, dict) and set(e) <= {"$oid", "$numberInt", "$numberLong"}
            )
        invalid = [s for s in shards if s.locator.get("invalid_episode_ids")]
        assert sum(s.estimated_chunks for s in invalid) == 5 and len(invalid) == 3  # split by _id, window 2
        seen = [r.fields["chunk_id"] for s in shards for r in source.read(s, Selection())]
        assert sorted(seen) == sorted(
            [r["chunk_id"] for r in rows] + [f"bad-{i}" for i in range(5)] + ["oid-ep"]
        )
        # A locator carrying an operator (an old plan, a tampered ledger) is refused, not queried.
        from pipeline.errors import SourceError
        from pipeline.records import ShardSpec

        forged = ShardSpec(shard_id="ep-x", locator={"episodes": [{"$gt": ""}]}, estimated_chunks=1)
        with pytest.raises(SourceError, match="episode"):
            list(source.read(forged, Selection()))
    finally:
        source.close()


# --------------------------------------------------------------------------- E3


def test_ids_that_collide_as_strings_are_duplicates(
    mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path
) -> None:
    rows = subset(1)
    load_chunks(mongo, rows)
    ep = rows[0]["episode_id"]
    oid = ObjectId()
    uid = uuid.uuid4()
    docs = [
        {"_id": 1, "episode_id": ep, "text": "Integer one."},
        {"_id": "1", "episode_id": ep, "text": "String one."},
        {"_id": oid, "episode_id": ep, "text": "An ObjectId."},
        {"_id": str(oid), "episode_id": ep, "text": "Its hex string."},
        {"_id": Binary.from_uuid(uid, UuidRepresentation.STANDARD), "episode_id": ep, "text": "A UUID."},
        {"_id": str(uid), "episode_id": ep, "text": "Its text form."},
        {"_id": 2, "episode_id": ep, "text": "Integer two, alone: fine."},
        {"_id": "01", "episode_id": ep, "text": "Not the string form of 1: fine."},
    ]
    mongo.db.chunks.insert_many(docs)
    dup_ids = {"1", str(oid), str(uid)}
    good = len(rows) + 2
    cfg = mongo_config(mongo, tiny_model(tiny_model_dir), tmp_path)

    first = run(cfg, RunOptions())
    assert first.status == "completed", first.error
    assert first.counts.embedded == good and first.counts.dead_lettered == 6
    letters = list(mongo.db.podembed_dead_letters.find())
    assert {d["chunk_id"] for d in letters} == dup_ids
    assert all("duplicate chunk id" in d["reason"] for d in letters)
    vecs = stored(mongo)
    assert not dup_ids & set(vecs) and {"2", "01"} <= set(vecs)

    # Stable: nothing re-embedded, status at 100% of the valid chunks.
    for _ in range(2):
        again = run(cfg, RunOptions())
        assert again.counts.embedded == 0 and again.counts.dead_lettered == 6
    cov = _status(cfg)
    assert cov.total == len(rows) + len(docs) and cov.valid == good and cov.current == good

    # A selection that holds only one of a colliding pair still treats it as a duplicate.
    one = _plan(cfg, Selection(episode_ids=(ep,)))
    assert one.invalid == 6


def test_collisions_in_a_chunk_id_field(mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path) -> None:
    docs = [
        {"cid": 7, "episode_id": "a", "text": "Integer seven."},
        {"cid": "7", "episode_id": "b", "text": "String seven."},
        {"cid": "8", "episode_id": "a", "text": "Eight."},
        {"cid": "8", "episode_id": "a", "text": "Eight again."},
        {"cid": "9", "episode_id": "b", "text": "Nine."},
    ]
    mongo.db.chunks.insert_many(docs)
    cfg = mongo_config(
        mongo, tiny_model(tiny_model_dir), tmp_path, fields={"chunk_id": "cid"}, sink={"id_field": "cid"}
    )
    parts = open_parts(cfg)
    try:
        assert parts.source.duplicate_ids(Selection()) == {"7": 2, "8": 2}
        # Duplicates are a property of the collection, not of the selection.
        assert parts.source.duplicate_ids(Selection(episode_ids=("b",))) == {"7": 2, "8": 2}
    finally:
        parts.close()
    report = run(cfg, RunOptions())
    assert report.counts.embedded == 1 and report.counts.dead_lettered == 4


# --------------------------------------------------------------------------- D3


BAD_URIS = [
    "mongodb://app:hunter2secret@db.example:notaport/",
    "mongodb://app:hunter2secret@db.example:99999/",
    "mongodb://app:hunter2secret@/",
    "http://app:hunter2secret@db.example/",
]


def test_malformed_uri_is_exit_2_naming_the_variable(
    mongo: MongoEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from jobs.cli import cli

    raw = mongo_raw(mongo, tiny_model(str(tmp_path)), tmp_path)  # the model is never reached
    for section in ("source", "sink"):
        raw[section]["uri_env"] = "PODEMBED_BAD_URI"
    cfg_path = tmp_path / "bad.toml"
    cfg_path.write_text(to_toml(raw))
    for uri in BAD_URIS:
        monkeypatch.setenv("PODEMBED_BAD_URI", uri)
        for command in ("backfill", "status", "plan"):
            result = CliRunner().invoke(cli, [command, "--config", str(cfg_path)])
            assert result.exit_code == 2, (uri, command, result.output, result.exception)
            assert isinstance(result.exception, SystemExit)  # not an escaped exception
            assert "hunter2secret" not in result.output
            assert "PODEMBED_BAD_URI" in result.output and "source.uri_env" in result.output
    # The real process too: one line on stderr, no traceback, no password.
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "backfill", "--config", str(cfg_path)],
        cwd=ROOT,
        env=cli_env(PODEMBED_BAD_URI=BAD_URIS[0]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out and "hunter2secret" not in out and "PODEMBED_BAD_URI" in out


def test_cli_status_and_plan_survive_operator_episode_ids(
    mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path
) -> None:
    rows = subset(1)
    load_chunks(mongo, rows)
    mongo.db.chunks.insert_many(
        [
            {"_id": "evil-gt", "episode_id": {"$gt": ""}, "text": "x"},
            {"_id": "evil-regex", "episode_id": Regex(".*"), "text": "y"},
        ]
    )
    raw = mongo_raw(mongo, tiny_model(tiny_model_dir), tmp_path)
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(to_toml(raw))
    env = cli_env(**{URI_ENV: mongo.uri})
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "status", "--config", str(cfg_path), "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cov = json.loads(proc.stdout)
    assert cov["total"] == len(rows) + 2 and cov["invalid"] == 2
