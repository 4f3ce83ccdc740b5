"""Runs that overlap on one target cooperate through claims on episodes (both ledgers).

Every run is the real CLI in a subprocess. "Started while it runs" is guaranteed, never
timed: a run started with ``PODEMBED_TEST_GATE`` stops at a named point (``claimed-1``:
its first shard's episodes are claimed) until the test deletes the ``hold-`` file, and
a run waiting for an episode says so on stderr before the test moves on.

- SQLite ledger + Parquet sink, and MongoDB ledger + sink on SecantusDB.
- A backfill over ten episodes, while it holds its first episode: an ingest of that
  episode (waits), an ingest of another episode and then a forced reindex of it (run
  to the end), two ingests of one episode at once, and an ingest holding an episode the
  backfill reaches later (the backfill leaves it to that run and says so).
- A backfill killed with ``kill -9`` while an ingest waits on its claim: the ingest
  takes the episode over at once (MongoDB: with a 600 s lease, so by detecting the dead
  process, not by expiry), and the next backfill resumes the killed run without waiting.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from jobs.cli import cli
from pipeline.files.sink import read_vectors
from tests.helpers import ROOT, raw_rows_in_files, sample_rows, write_rows
from tests.mongo_fixtures import (  # noqa: F401 - fixtures
    URI_ENV,
    MongoEnv,
    cli_env,
    load_chunks,
    mongo,
    mongo_raw,
    mongo_server,
    stored,
    tiny_model,
    to_toml,
)

PER_EPISODE = 4
EPISODES = 10
TIMEOUT = 300.0


def _rows() -> list[dict[str, Any]]:
    """Ten episodes of four chunks, grouped by episode (one row group / shard each)."""
    rows = sorted(sample_rows(episodes=EPISODES), key=lambda r: (r["episode_id"], r["chunk_index"]))
    seen: Counter[str] = Counter()
    out = []
    for r in rows:
        if seen[r["episode_id"]] < PER_EPISODE:
            seen[r["episode_id"]] += 1
            out.append(r)
    return out


@dataclass
class Target:
    """One ledger/sink pair under test: its config and how to read back what is stored."""

    kind: str
    config: Path
    env: dict[str, str]
    mongo: MongoEnv | None = None

    def vector_rows(self) -> list[tuple[str, str]]:
        """(chunk id, run id) of every stored vector row, duplicates included."""
        if self.mongo is not None:
            got = stored(self.mongo)
            assert self.mongo.db.chunks.count_documents({}) == EPISODES * PER_EPISODE
            return [(cid, v["meta"]["run_id"]) for cid, v in got.items()]
        out = self.config.parent / "out"
        current = read_vectors(out, columns=["run_id"])
        on_disk = raw_rows_in_files(out)
        assert sorted(on_disk) == sorted(current["chunk_id"].to_pylist())  # no stray rows in files
        return list(zip(current["chunk_id"].to_pylist(), current["run_id"].to_pylist(), strict=True))


@pytest.fixture(params=["sqlite+parquet", "mongo"])
def target(request: pytest.FixtureRequest, tmp_path: Path, tiny_model_dir: str) -> Target:
    rows = _rows()
    model = tiny_model(tiny_model_dir)
    batching = {"window_chunks": PER_EPISODE, "token_budget": 4096, "max_batch_size": 32}
    if request.param == "mongo":
        env_obj: MongoEnv = request.getfixturevalue("mongo")
        load_chunks(env_obj, rows)
        raw = mongo_raw(env_obj, model, tmp_path, batching=batching)
        raw["checkpoint"].update(lease_ttl_s=600.0, heartbeat_s=1.0, claim_wait_s=120.0)
        env = cli_env(**{URI_ENV: env_obj.uri})
    else:
        env_obj = None
        src = write_rows(tmp_path / "chunks.parquet", rows, row_group_size=PER_EPISODE)
        raw = {
            "source": {"kind": "parquet", "path": str(src)},
            "sink": {"kind": "parquet", "path": str(tmp_path / "out")},
            "checkpoint": {"kind": "sqlite", "claim_wait_s": 120.0},
            "model": model,
            "batching": batching,
            "executor": {"kind": "local"},
            "cost": {"device": "cpu", "hourly_usd": 0.0},
            "report": {"dir": str(tmp_path / "runs")},
        }
        env = cli_env()
    config = tmp_path / "podembed.toml"
    config.write_text(to_toml(raw))
    return Target(request.param, config, env, env_obj)


class Run:
    """``python -m jobs.cli <command> --json`` in the background, output in files (with a
    gate folder, through ``tests.gated_cli``, which can hold it after a claim)."""

    def __init__(
        self, target: Target, tmp: Path, name: str, args: list[str], gate: Path | None = None
    ) -> None:
        self.name = name
        self.out = tmp / f"{name}.out"
        self.err = tmp / f"{name}.err"
        env = dict(target.env)
        if gate is not None:
            gate.mkdir(parents=True, exist_ok=True)
            env["PODEMBED_TEST_GATE"] = str(gate)
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.gated_cli" if gate else "jobs.cli",
                    *args,
                    "--config",
                    str(target.config),
                    "--json",
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=err,
                text=True,
            )

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_for(self, what: str, predicate: Any) -> None:
        """Poll (10 ms) until ``predicate()``; fail at once if the run ends first."""
        deadline = time.monotonic() + TIMEOUT
        while not predicate():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} ended (rc {self.proc.returncode}) before {what}:\n{self.stderr()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: timed out waiting for {what}")
            time.sleep(0.01)

    def waiting_on_a_claim(self) -> None:
        self.wait_for("it waits on a claim", lambda: "waiting up to" in self.stderr())

    def report(self) -> dict[str, Any]:
        """Wait for the end; exit code 0 and the JSON report."""
        rc = self.proc.wait(TIMEOUT)
        assert rc == 0, f"{self.name} exited {rc}:\n{self.stderr()[-4000:]}"
        return json.loads(self.out.read_text())


def _hold(gate: Path, point: str = "claimed-1") -> Path:
    gate.mkdir(parents=True, exist_ok=True)
    hold = gate / f"hold-{point}"
    hold.write_text("")
    return hold


def _at(gate: Path, point: str = "claimed-1") -> Any:
    return lambda: (gate / f"at-{point}").exists()


def _status(target: Target) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["status", "--config", str(target.config), "--json"], env=target.env)
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{") :])


def _live(target: Target) -> dict[str, list[str]]:
    """command + selection -> claims, of the live runs ``status`` shows."""
    return {f"{r['command']} {r['selection']}": r["claims"] for r in _status(target)["live_runs"]}


def test_overlapping_runs_embed_every_chunk_once_and_all_exit_0(target: Target, tmp_path: Path) -> None:
    ep = sorted({r["episode_id"] for r in _rows()})
    waits_on, ingested, held_by_ingest, twice = ep[0], ep[2], ep[5], ep[8]

    # An ingest holds its episode (stopped right after claiming it) ...
    g_gate = tmp_path / "gate-g"
    g_hold = _hold(g_gate)
    g = Run(target, tmp_path, "ingest-held", ["ingest", held_by_ingest], gate=g_gate)
    g.wait_for("its claim", _at(g_gate))
    # ... and a backfill holds its first episode, stopped there while the others run.
    b_gate = tmp_path / "gate-b"
    b_hold = _hold(b_gate)
    backfill = Run(target, tmp_path, "backfill", ["backfill"], gate=b_gate)
    backfill.wait_for("its first claim", _at(b_gate))

    waiter = Run(target, tmp_path, "ingest-waits", ["ingest", waits_on])
    waiter.waiting_on_a_claim()
    assert f"{waits_on} (run " in waiter.stderr() and "backfill" in waiter.stderr()
    live = _live(target)
    assert live["backfill all"] == [waits_on]
    assert live[f"ingest episode={held_by_ingest}"] == [held_by_ingest]
    assert live[f"ingest episode={waits_on}"] == []

    # An ingest of another episode, then a forced reindex of it, run to their end meanwhile.
    reports = {"ingest": Run(target, tmp_path, "ingest", ["ingest", ingested]).report()}
    reports["reindex"] = Run(target, tmp_path, "reindex", ["reindex", "--episode", ingested]).report()

    # Two ingests of one episode at once: the second waits for the first's claim.
    f_gate = tmp_path / "gate-f"
    f_hold = _hold(f_gate)
    f1 = Run(target, tmp_path, "same-1", ["ingest", twice], gate=f_gate)
    f1.wait_for("its claim", _at(f_gate))
    f2 = Run(target, tmp_path, "same-2", ["ingest", twice])
    f2.waiting_on_a_claim()
    f_hold.unlink()
    reports["same-1"], reports["same-2"] = f1.report(), f2.report()

    b_hold.unlink()  # the backfill goes on; the held ingest's episode is still claimed
    reports["backfill"] = backfill.report()
    reports["ingest-waits"] = waiter.report()
    g_hold.unlink()
    reports["ingest-held"] = g.report()

    embedded = {name: r["counts"]["embedded"] for name, r in reports.items()}
    print(f"\n[{target.kind}] chunks embedded by each of {len(reports)} overlapping runs: {embedded}")
    assert all(r["status"] == "completed" for r in reports.values())
    needed, forced = EPISODES * PER_EPISODE, PER_EPISODE  # every chunk once, plus the reindex
    assert sum(embedded.values()) == needed + forced
    assert embedded == {
        "ingest": PER_EPISODE,
        "reindex": PER_EPISODE,
        "same-1": PER_EPISODE,
        "same-2": 0,  # waited for same-1, then found its episode current
        "backfill": 7 * PER_EPISODE,  # all but the ingested, the held and the twice-ingested episode
        "ingest-waits": 0,  # waited for the backfill's first episode, then found it current
        "ingest-held": PER_EPISODE,
    }
    bf = reports["backfill"]
    assert bf["counts"]["claimed_elsewhere"] == PER_EPISODE
    assert list(bf["left_to_other_runs"]) == [held_by_ingest]
    assert reports["ingest-held"]["run_id"] in bf["left_to_other_runs"][held_by_ingest]
    assert "left to other live runs (they write them): 4 chunks of 1 episodes" in backfill.stderr()
    assert reports["ingest-waits"]["claim_wait_s"] > 0 and reports["same-2"]["claim_wait_s"] > 0

    # Every chunk has exactly one current vector, written by the run that claimed its episode.
    rows = target.vector_rows()
    ids = [cid for cid, _ in rows]
    assert len(ids) == len(set(ids)) == EPISODES * PER_EPISODE
    by_episode = {r["chunk_id"]: r["episode_id"] for r in _rows()}
    owner = {
        ingested: reports["reindex"]["run_id"],
        twice: reports["same-1"]["run_id"],
        held_by_ingest: reports["ingest-held"]["run_id"],
    }
    for cid, run_id in rows:
        assert run_id == owner.get(by_episode[cid], bf["run_id"]), (cid, run_id)
    assert _status(target)["live_runs"] == []


def test_kill_9_of_a_backfill_frees_its_claim_for_a_waiting_ingest_and_the_next_run_resumes(
    target: Target, tmp_path: Path
) -> None:
    ep = sorted({r["episode_id"] for r in _rows()})
    b_gate = tmp_path / "gate-b"
    _hold(b_gate)
    backfill = Run(target, tmp_path, "backfill", ["backfill"], gate=b_gate)
    backfill.wait_for("its first claim", _at(b_gate))
    waiter = Run(target, tmp_path, "ingest", ["ingest", ep[0]])
    waiter.waiting_on_a_claim()
    assert _live(target)["backfill all"] == [ep[0]]

    backfill.proc.kill()  # kill -9, holding its claim (the MongoDB lease would last 600 s)
    assert backfill.proc.wait(TIMEOUT) == -9
    report = waiter.report()
    assert report["counts"]["embedded"] == PER_EPISODE and report["counts"]["claimed_elsewhere"] == 0
    assert "took over" in waiter.stderr() or target.kind != "mongo"

    again = Run(target, tmp_path, "backfill-again", ["backfill"]).report()
    assert again["resumed"] is True and again["status"] == "completed"
    assert again["counts"]["embedded"] == (EPISODES - 1) * PER_EPISODE
    assert again["counts"]["claimed_elsewhere"] == 0 and again["left_to_other_runs"] == {}
    ids = [cid for cid, _ in target.vector_rows()]
    assert len(ids) == len(set(ids)) == EPISODES * PER_EPISODE
    assert _status(target)["live_runs"] == []
