# ruff: noqa: F811  (pytest fixtures imported from tests.mongo_fixtures are redefined as arguments)
"""Crashes, server outages, secrets: MongoDB runs that are interrupted the hard way.

kill -9 of ``podembed`` itself (subprocesses of the real CLI), a SecantusDB server
stopped or killed mid-run and restarted on the same data directory, a server that is
down at start-up, and a URI with a password that must never show.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import numpy as np
import pytest
from pymongo import MongoClient

from pipeline.engine.options import RunOptions
from pipeline.engine.runner import run
from pipeline.errors import TargetError
from pipeline.parts import open_executor
from tests.helpers import ROOT
from tests.mongo_fixtures import (  # noqa: F401 - fixtures
    URI_ENV,
    MongoEnv,
    SecantusProcess,
    cli_env,
    free_port,
    load_chunks,
    mongo,
    mongo_config,
    mongo_raw,
    mongo_server,
    secantus_proc,
    stored,
    subset,
    tiny_model,
    to_toml,
)
from tests.test_mongo_pipeline import HookExecutor


def _cli(args: list[str], env: dict[str, str], **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


def _wait_for(predicate: Any, timeout: float, what: str, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}:\n{err[-3000:]}")
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------- kill -9 of a run


def test_kill9_at_several_points_then_resume(mongo: MongoEnv, tiny_model_dir: str, tmp_path: Path) -> None:
    rows = subset(12)  # ~350 chunks, one episode per shard
    load_chunks(mongo, rows)
    model = tiny_model(tiny_model_dir)
    raw = mongo_raw(mongo, model, tmp_path / "crash", checkpoint={"lease_ttl_s": 2.0})
    cfg_path = tmp_path / "crash.toml"
    cfg_path.write_text(to_toml(raw))
    env = cli_env(**{URI_ENV: mongo.uri})
    shards = mongo.db.podembed_shards

    def killed_when(condition: Any, what: str) -> None:
        proc = _cli(["backfill", "--config", str(cfg_path)], env)
        try:
            _wait_for(condition, 120, what, proc)
        finally:
            proc.kill()
            proc.communicate()
        assert proc.returncode == -9
        run_doc = mongo.db.podembed_runs.find_one(sort=[("started_at", -1)])
        assert run_doc is None or run_doc["status"] == "running"  # it did not finish

    # 1: the run is registered, nothing written yet.  2 and 3: mid-run, after some shards.
    killed_when(lambda: mongo.db.podembed_owners.count_documents({}) == 1, "the registration")
    killed_when(lambda: shards.count_documents({}) >= 2, "two shards")
    killed_when(lambda: shards.count_documents({}) >= 6, "six shards")
    done_before = shards.count_documents({})
    assert done_before < 12

    proc = _cli(["backfill", "--config", str(cfg_path), "--json"], env)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(out)
    assert report["status"] == "completed" and report["resumed"] is True
    assert report["shards_skipped_done"] >= done_before
    assert report["counts"]["embedded"] < len(rows)  # what was written before is not redone

    runs = list(mongo.db.podembed_runs.find())
    # The first kill may come before the run is recorded (registered, plan not done).
    assert len(runs) == 1 and runs[0]["attempts"] in (3, 4) and runs[0]["status"] == "completed"
    got = stored(mongo)
    assert sorted(got) == sorted(r["chunk_id"] for r in rows)
    assert mongo.db.chunks.count_documents({}) == len(rows)  # no duplicate documents
    assert {v["meta"]["run_id"] for v in got.values()} == {runs[0]["_id"]}

    # Vectors equal those of an uninterrupted run (in another database on the same server).
    ref_env = MongoEnv(mongo.uri, mongo.database + "_ref", mongo.client)
    try:
        load_chunks(ref_env, rows)
        assert run(mongo_config(ref_env, model, tmp_path / "ref"), RunOptions()).status == "completed"
        ref = stored(ref_env)
    finally:
        mongo.client.drop_database(ref_env.database)
    assert max(float(np.abs(got[c]["vector"] - ref[c]["vector"]).max()) for c in got) <= 1e-6


# --------------------------------------------------------------------------- server outages


def _run_in_background(cfg: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Start a slowed-down backfill in a thread; the dict gets its report or its error."""
    result: dict[str, Any] = {}

    def go() -> None:
        try:
            result["report"] = run(cfg, RunOptions(), executor=HookExecutor(open_executor(cfg), delay=0.1))
        except BaseException as exc:
            result["error"] = exc

    worker = threading.Thread(target=go)
    worker.start()
    return worker, result


def _server_env(server: SecantusProcess, monkeypatch: pytest.MonkeyPatch) -> MongoEnv:
    monkeypatch.setenv(URI_ENV, server.uri)
    client = MongoClient(server.uri, tz_aware=True, serverSelectionTimeoutMS=20000)
    return MongoEnv(server.uri, "outage", client)


def test_server_restarted_mid_run_the_run_completes(
    secantus_proc: SecantusProcess,
    tiny_model_dir: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    env = _server_env(secantus_proc, monkeypatch)
    rows = subset(6)
    load_chunks(env, rows)
    cfg = mongo_config(
        env,
        tiny_model(tiny_model_dir),
        tmp_path,
        source={"server_selection_timeout_ms": 1000, "retry_s": 60.0},
        sink={"server_selection_timeout_ms": 1000, "retry_s": 60.0},
        checkpoint={"lease_ttl_s": 30.0, "server_selection_timeout_ms": 1000, "retry_s": 60.0},
    )
    worker, result = _run_in_background(cfg)
    _wait_for(lambda: env.db.podembed_shards.count_documents({}) >= 2, 120, "two shards")
    env.client.close()
    secantus_proc.stop()  # a clean shutdown in the middle of the run
    time.sleep(1.0)
    secantus_proc.start()
    worker.join(180)
    assert not worker.is_alive()
    assert "error" not in result, result.get("error")
    report = result["report"]
    assert report.status == "completed", report.error
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert retries, "the outage was not noticed: nothing was retried"
    client = MongoClient(secantus_proc.uri, tz_aware=True)
    try:
        env = MongoEnv(secantus_proc.uri, "outage", client)
        got = stored(env)
        assert sorted(got) == sorted(r["chunk_id"] for r in rows)  # nothing lost
        assert env.db.podembed_shards.count_documents({}) == report.shards_total
        assert env.db.podembed_claims.count_documents({}) == 0
        assert env.db.podembed_owners.count_documents({}) == 0
    finally:
        client.close()


def test_server_down_too_long_fails_clearly_then_rerun_completes(
    secantus_proc: SecantusProcess, tiny_model_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _server_env(secantus_proc, monkeypatch)
    rows = subset(6)
    load_chunks(env, rows)
    fast = {"server_selection_timeout_ms": 500, "retry_s": 1.5}
    cfg = mongo_config(
        env,
        tiny_model(tiny_model_dir),
        tmp_path,
        source=fast,
        sink=fast,
        checkpoint={**fast, "lease_ttl_s": 2.0},
    )
    worker, result = _run_in_background(cfg)
    _wait_for(lambda: env.db.podembed_shards.count_documents({}) >= 2, 120, "two shards")
    env.client.close()
    started = time.monotonic()
    secantus_proc.kill()  # kill -9 of the server; it stays down
    worker.join(60)
    assert not worker.is_alive()
    assert time.monotonic() - started < 30  # fails in seconds, no hang
    # The ledger on the dead server cannot record the outcome either; that never hides the
    # run's own error: the report comes back failed, naming both (issue 19.5).
    error = result.get("error")
    report = result.get("report")
    if report is not None:
        assert report.status == "failed", result
        error = report.error
    else:
        assert isinstance(error, TargetError), result
    assert "MongoDB unreachable" in str(error) and "retried" in str(error)

    secantus_proc.start()  # same data directory, after a kill -9
    again = run(cfg, RunOptions())
    assert again.status == "completed", again.error
    assert again.resumed and again.shards_skipped_done >= 1
    client = MongoClient(secantus_proc.uri, tz_aware=True)
    try:
        got = stored(MongoEnv(secantus_proc.uri, "outage", client))
        assert sorted(got) == sorted(r["chunk_id"] for r in rows)
    finally:
        client.close()


def test_server_down_at_startup_exits_1_within_seconds(tmp_path: Path, tiny_model_dir: str) -> None:
    port = free_port()
    uri = f"mongodb://podembed:Hunter2-{port}@127.0.0.1:{port}/?authSource=admin"
    env_obj = MongoEnv(uri, "down", None)
    raw = mongo_raw(env_obj, tiny_model(tiny_model_dir), tmp_path)
    cfg_path = tmp_path / "down.toml"
    cfg_path.write_text(to_toml(raw))
    started = time.monotonic()
    proc = _cli(["backfill", "--config", str(cfg_path)], cli_env(**{URI_ENV: uri}))
    out, err = proc.communicate(timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, err
    assert elapsed < 20  # 2 s server selection + interpreter start-up
    assert "cannot reach MongoDB at mongodb://podembed:***@127.0.0.1" in err
    assert f"Hunter2-{port}" not in out + err


# --------------------------------------------------------------------------- secrets


PASSWORD = "Sup3r/S3cret@pod:embed"


@pytest.fixture
def auth_server(tmp_path: Path) -> Any:
    """An in-process SecantusDB that requires authentication, with one user."""
    from secantus import SecantusDBServer

    data = tmp_path / "auth-data"
    with SecantusDBServer(storage_path=str(data)) as server:
        admin = MongoClient(server.uri)
        admin.admin.command("createUser", "podembed", pwd=PASSWORD, roles=["root"])
        admin.close()
    with SecantusDBServer(storage_path=str(data), require_auth=True) as server:
        yield server.uri.replace("mongodb://", f"mongodb://podembed:{quote_plus(PASSWORD)}@")


def test_password_never_appears_in_any_output(auth_server: str, tiny_model_dir: str, tmp_path: Path) -> None:
    uri = auth_server
    secrets = [PASSWORD, quote_plus(PASSWORD)]
    client = MongoClient(uri, tz_aware=True)
    env_obj = MongoEnv(uri, "secret", client)
    load_chunks(env_obj, subset(1)[:12])
    raw = mongo_raw(env_obj, tiny_model(tiny_model_dir), tmp_path)
    cfg_path = tmp_path / "secret.toml"
    cfg_path.write_text(to_toml(raw))
    env = cli_env(**{URI_ENV: uri})
    outputs: list[str] = []
    for args in (
        ["-vv", "backfill", "--config", str(cfg_path), "--json"],
        ["-vv", "status", "--config", str(cfg_path), "--json"],
        ["-vv", "plan", "--config", str(cfg_path), "--json"],
    ):
        proc = _cli(args, env)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        outputs += [out, err]
    assert '"status": "completed"' in outputs[0]
    assert "127.0.0.1" in outputs[2]  # status names the server, without the password
    # A wrong password: a clean error naming the server, still no secret.
    wrong = uri.replace(quote_plus(PASSWORD), "Wrong-" + quote_plus(PASSWORD))
    proc = _cli(["-vv", "backfill", "--config", str(cfg_path)], cli_env(**{URI_ENV: wrong}))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "podembed:***@" in err
    outputs += [out, err]
    # Reports on disk and the ledger in MongoDB.
    outputs += [p.read_text() for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    outputs += [json.dumps(d, default=str) for d in client["secret"]["podembed_runs"].find()]
    client.close()
    blob = "\n".join(outputs)
    for secret in secrets:
        assert secret not in blob
    assert "Sup3r" not in blob
