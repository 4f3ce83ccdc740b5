# ruff: noqa: F811  (pytest fixtures imported from tests.mongo_fixtures are redefined as arguments)
"""Opt-in stress test: random SIGKILLs of ``podembed backfill`` on MongoDB, then resume.

Run it with ``pytest -m stress tests/test_mongo_stress.py -s`` (it prints its figures).
Each trial loads the corpus into a fresh database on a ``secantusd-py`` server, starts
``podembed backfill``, kills it with SIGKILL at a random moment (once or twice: after a
random number of shards plus a random fraction of the next, or at a random time), then
resumes until the run completes, and checks that every chunk has exactly one current
vector, equal to that of a clean run, and that ``status`` says 100% current. Trials
alternate between the in-place sink and the vectors-collection sink. The commands run
in processes forked from :mod:`tests.cli_forkserver` (the real CLI entry point, without
paying the torch import for each of the ~50 runs).

``PODEMBED_STRESS_TRIALS`` (default 20) and ``PODEMBED_STRESS_SEED`` (default 10) change
the loop; a failure message names the seed and trial so it can be replayed.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pymongo import MongoClient

from pipeline.parts import open_parts
from pipeline.records import text_sha256
from pipeline.reporting.status import coverage
from tests.cli_forkserver import ForkServer
from tests.helpers import ROOT
from tests.mongo_fixtures import (  # noqa: F401 - fixtures
    URI_ENV,
    MongoEnv,
    SecantusProcess,
    cli_env,
    load_chunks,
    mongo_config,
    mongo_raw,
    secantus_proc,
    stored,
    subset,
    tiny_model,
    to_toml,
)

# Skipped (before any fixture is built) unless the marker expression asks for it, so a
# plain `pytest` never runs it, whatever the project's addopts say.
_ASKED = "'stress' in (config.getoption('markexpr') or '').replace('not stress', '')"
pytestmark = [pytest.mark.stress, pytest.mark.skipif(f"not ({_ASKED})", reason="opt in with -m stress")]

TRIALS = int(os.environ.get("PODEMBED_STRESS_TRIALS", "20"))
SEED = int(os.environ.get("PODEMBED_STRESS_SEED", "10"))
EPISODES = 8  # 229 chunks of the sample corpus
# Short windows make many shards (more places to be killed); 32 tokens a chunk keep the
# tiny model's work per trial to a few seconds even on a loaded machine.
BATCHING = {"window_chunks": 16, "token_budget": 1024, "max_batch_size": 16}
CHECKPOINT = {"lease_ttl_s": 2.0, "claim_wait_s": 30.0}


def _sink(trial: int) -> dict[str, Any]:
    if trial % 2:
        return {"mode": "collection", "collection": "vectors", "chunks_collection": "chunks"}
    return {}


def _vectors(env: MongoEnv, trial: int) -> dict[str, dict[str, Any]]:
    return stored(env, collection="vectors") if trial % 2 else stored(env)


def test_random_sigkill_and_resume_trials(
    secantus_proc: SecantusProcess, tiny_model_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(SEED)
    rows = subset(EPISODES)
    ids = sorted(r["chunk_id"] for r in rows)
    texts = {r["chunk_id"]: r["text"] for r in rows}
    model = {**tiny_model(tiny_model_dir), "max_seq_length": 32}
    client = MongoClient(secantus_proc.uri, tz_aware=True, serverSelectionTimeoutMS=20000)
    monkeypatch.setenv(URI_ENV, secantus_proc.uri)
    figures: dict[str, Any] = {
        "trials": TRIALS,
        "seed": SEED,
        "chunks": len(rows),
        "kills": 0,
        "kills_landed": 0,
        "kills_before_first_shard": 0,
        "kills_mid_run": 0,
        "runs_finished_before_kill": 0,
        "resumes": 0,
        "vectors_checked": 0,
        "duplicates": 0,
        "max_abs_diff": 0.0,
    }
    started = time.monotonic()
    server = ForkServer(ROOT, cli_env(**{URI_ENV: secantus_proc.uri}))

    def backfill(cfg_path: Path) -> tuple[int, Path]:
        log = cfg_path.with_suffix(".log")
        return server.run(["backfill", "--config", str(cfg_path)], log), log

    def finished(pid: int, log: Path, where: str) -> None:
        rc = server.wait(pid)
        assert rc == 0, f"{where}: exit {rc}\n{log.read_text()[-3000:]}"

    try:
        # The reference: one clean run, and how long it takes.
        ref_env = MongoEnv(secantus_proc.uri, "stress_ref", client)
        load_chunks(ref_env, rows)
        ref_cfg = tmp_path / "ref.toml"
        ref_cfg.write_text(
            to_toml(mongo_raw(ref_env, model, tmp_path / "ref", batching=BATCHING, checkpoint=CHECKPOINT))
        )
        t0 = time.monotonic()
        finished(*backfill(ref_cfg), "clean run")
        clean_s = time.monotonic() - t0
        ref = {cid: v["vector"] for cid, v in stored(ref_env).items()}
        assert sorted(ref) == ids
        n_shards = ref_env.db.podembed_shards.count_documents({})
        figures["clean_run_s"] = round(clean_s, 2)
        figures["shards"] = n_shards

        for trial in range(TRIALS):
            where = f"seed {SEED} trial {trial}"
            env = MongoEnv(secantus_proc.uri, f"stress_{trial}", client)
            load_chunks(env, rows)
            kw: dict[str, Any] = {"sink": _sink(trial), "batching": BATCHING, "checkpoint": CHECKPOINT}
            cfg_path = tmp_path / f"t{trial}.toml"
            cfg_path.write_text(to_toml(mongo_raw(env, model, tmp_path / f"t{trial}", **kw)))
            for _ in range(rng.choice((1, 1, 2))):
                figures["kills"] += 1
                done_before = env.db.podembed_shards.count_documents({})
                pid, log = backfill(cfg_path)
                if rng.random() < 0.3:
                    # Anywhere in the run's life: lease, plan, embedding, writing, finishing.
                    deadline = time.monotonic() + rng.uniform(0.0, clean_s)
                    while time.monotonic() < deadline and server.poll(pid) is None:
                        time.sleep(0.01)
                else:
                    # After a random number of shards, plus a random part of the next one.
                    target = done_before + rng.randrange(0, max(1, n_shards - done_before))
                    limit = time.monotonic() + 300
                    while server.poll(pid) is None and time.monotonic() < limit:
                        if env.db.podembed_shards.count_documents({}) >= target:
                            break
                        time.sleep(0.01)
                    pause = time.monotonic() + rng.uniform(0.0, 0.4)
                    while time.monotonic() < pause and server.poll(pid) is None:
                        time.sleep(0.005)
                if server.poll(pid) is None:
                    shards_at_kill = env.db.podembed_shards.count_documents({})
                    os.kill(pid, signal.SIGKILL)
                    assert server.wait(pid) == -9, where
                    figures["kills_landed"] += 1
                    figures["kills_mid_run" if shards_at_kill > 0 else "kills_before_first_shard"] += 1
                else:
                    finished(pid, log, where)
                    figures["runs_finished_before_kill"] += 1

            # Resume until the run completes.
            figures["resumes"] += 1
            finished(*backfill(cfg_path), where)

            # One run, resumed after each kill (two when the first finished before its kill).
            runs = {r["_id"]: r for r in env.db.podembed_runs.find()}
            assert runs and all(r["status"] == "completed" for r in runs.values()), where
            got = _vectors(env, trial)
            assert sorted(got) == ids, where  # exactly the chunks, each once
            figures["duplicates"] += env.db.chunks.count_documents({}) - len(rows)
            if trial % 2:
                figures["duplicates"] += env.db.vectors.count_documents({}) - len(ids)
            for cid, v in got.items():
                assert v["meta"]["text_sha256"] == text_sha256(texts[cid]), where
                assert v["meta"]["run_id"] in runs, where
                diff = float(np.abs(v["vector"] - ref[cid]).max())
                figures["max_abs_diff"] = max(figures["max_abs_diff"], diff)
                assert diff <= 1e-6, f"{where}: {cid} differs by {diff}"
            figures["vectors_checked"] += len(got)
            cfg = mongo_config(env, model, tmp_path / f"t{trial}", **kw)
            parts = open_parts(cfg)
            try:
                cov = coverage(cfg, parts)
            finally:
                parts.close()
            assert cov.current == cov.valid == len(ids) and cov.stale == cov.missing == cov.removed == 0, (
                where
            )
            client.drop_database(env.database)
    finally:
        server.close()
        client.close()
    figures["total_s"] = round(time.monotonic() - started, 1)
    print("\nmongo stress:", figures)
    assert figures["duplicates"] == 0
    assert figures["kills_mid_run"] > 0  # the loop really interrupted work
