# ruff: noqa: F811  (pytest fixtures imported from tests.mongo_fixtures are redefined as arguments)
"""The first hour: typos are told, -v works where people type it, plan and summaries say true things.

The runs use the gated test executor (tests/gated_executor.py) with its gate open: fake
vectors, a word tokenizer, no model, so these tests take seconds and depend on no timing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs.cli import cli
from tests.gated_executor import MODEL, register
from tests.helpers import MINILM, config_dict, sample_rows, write_rows, write_toml
from tests.mongo_fixtures import MongoEnv, load_chunks, mongo, mongo_raw, mongo_server, to_toml  # noqa: F401


@pytest.fixture(autouse=True)
def _gated() -> Iterator[None]:
    register()
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


def _corpus(tmp_path: Path, rows: list[dict] | None = None) -> Path:
    return write_rows(tmp_path / "s.parquet", rows or sample_rows(n=40), row_group_size=1000)


def _gated_toml(tmp_path: Path, source: Path) -> Path:
    raw = config_dict(source, tmp_path / "out", model=dict(MODEL), executor={"kind": "gated"})
    raw["report"] = {"dir": str(tmp_path / "out" / "runs")}
    return write_toml(tmp_path / "gated.toml", raw)


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    assert not isinstance(result.exception, AssertionError | TypeError | AttributeError), result.output
    return result.exit_code, result.output


def _reports(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "out" / "runs").glob("*.json")) if (tmp_path / "out" / "runs").is_dir() else []


# ----------------------------------------------------------------------- typos in ids
def test_ingest_of_a_missing_episode_exits_2_and_names_near_matches(tmp_path: Path) -> None:
    toml = _gated_toml(tmp_path, _corpus(tmp_path))
    code, out = _invoke("ingest", "pc-astro-ep1", "--config", str(toml))
    assert code == 2, out
    assert "ingest: episode pc-astro-ep1: no chunk in the source has this id" in out, out
    assert "did you mean pc-astro-ep01, pc-astro-ep02" in out, out
    assert "0 seen" not in out and _reports(tmp_path) == [], "a run was recorded for nothing"

    # Far from every id: told, without suggestions.
    code, out = _invoke("ingest", "zzzz", "--config", str(toml))
    assert (
        code == 2 and "episode zzzz: no chunk in the source has this id" in out and "did you mean" not in out
    )

    code, out = _invoke("ingest", "pc-astro-ep01", "--config", str(toml))
    assert code == 0 and "21 embedded" in out, out


def test_reindex_with_one_unknown_episode_or_podcast_exits_2_naming_only_that_one(tmp_path: Path) -> None:
    toml = _gated_toml(tmp_path, _corpus(tmp_path))
    code, out = _invoke(
        "reindex", "--config", str(toml), "--episode", "pc-astro-ep02", "--episode", "pc-astro-ep03"
    )
    assert code == 2, out
    assert "--episode pc-astro-ep03: no chunk in the source has this id" in out, out
    assert "pc-astro-ep02:" not in out and _reports(tmp_path) == []
    code, out = _invoke("reindex", "--config", str(toml), "--podcast", "pc-astr")
    assert (
        code == 2 and "--podcast pc-astr: no chunk in the source has this id (did you mean pc-astro?)" in out
    )


def test_search_decides_nothing_can_match_before_loading_the_model(tmp_path: Path) -> None:
    toml = _gated_toml(tmp_path, _corpus(tmp_path))
    code, out = _invoke("backfill", "--config", str(toml))
    assert code == 0, out
    # The gated model has no weights: had search loaded it, the error would be the model's.
    code, out = _invoke("search", "northern lights", "--config", str(toml), "--episode", "pc-astro-ep3")
    assert code == 2, out
    assert "search: --episode pc-astro-ep3: no chunk in the source has this id (did you mean" in out, out
    code, out = _invoke("search", "northern lights", "--config", str(toml), "--since", "2100-01-01")
    assert code == 2, out
    assert "search: no chunk in the source matches since=2100-01-01" in out, out


# ------------------------------------------------------------------------------- -v
def test_verbose_is_accepted_after_the_subcommand_too(tmp_path: Path) -> None:
    toml = _gated_toml(tmp_path, _corpus(tmp_path))
    code, out = _invoke("-v", "backfill", "--config", str(toml), "--verbose")
    assert code == 0 and "40 embedded" in out, out
    assert logging.getLogger().level == logging.DEBUG  # one before and one after: -vv
    code, out = _invoke("status", "--config", str(toml), "-v")
    assert code == 0, out
    assert logging.getLogger().level == logging.INFO


# ------------------------------------------------------------------------------ plan
def test_plan_help_speaks_of_a_plan() -> None:
    code, out = _invoke("plan", "--help")
    assert code == 0
    flat = " ".join(out.split())
    assert "Plan what `--limit N` would embed: at most N chunks, the rest counted as deferred." in flat
    assert "Print the plan as JSON on stdout." in flat
    assert "run report" not in flat and "Embed at most" not in flat


def test_plan_on_modal_from_the_local_config_prices_the_gpu_it_plans_for(tmp_path: Path) -> None:
    raw = config_dict(
        _corpus(tmp_path, sample_rows(n=10)), tmp_path / "out", model={**MINILM, "precision": "auto"}
    )
    raw["cost"] = {"device": "cpu", "hourly_usd": 0.0, "tokens_per_second": 4000}
    raw["report"] = {"dir": str(tmp_path / "out" / "runs")}
    toml = write_toml(tmp_path / "local.toml", raw)
    code, out = _invoke("plan", "--config", str(toml), "--executor", "modal", "--json")
    assert code == 0, out
    plan = json.loads(out[out.index("{") :])
    assert plan["precision"] == "bf16", plan  # the A10G's
    assert plan["device"] == "A10G" and plan["hourly_usd"] == 1.10 and plan["est_cost_usd"] > 0, plan
    code, out = _invoke("plan", "--config", str(toml), "--json")
    local = json.loads(out[out.index("{") :])
    assert local["device"] == "cpu" and local["hourly_usd"] == 0.0


# ------------------------------------------------------------------- run summaries
def test_removed_chunks_line_says_how_to_prune_them(tmp_path: Path) -> None:
    rows = sample_rows(n=20)
    source = _corpus(tmp_path, rows)
    toml = _gated_toml(tmp_path, source)
    assert _invoke("backfill", "--config", str(toml))[0] == 0
    write_rows(source, rows[:18], row_group_size=1000)
    code, out = _invoke("backfill", "--config", str(toml))
    assert code == 0, out
    assert "removed from source: 2 (their vectors stay in the sink; `backfill --prune` deletes them)" in out
    code, out = _invoke("backfill", "--config", str(toml), "--prune")
    assert code == 0 and "removed from source: 2 (pruned from sink: 2)" in out, out


def test_the_resume_hint_is_a_command_that_exists_in_this_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobs.cli import _program

    exe = tmp_path / "venv" / "bin" / "podembed"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["venv/bin/podembed", "backfill"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv not activated: bare `podembed` is not found
    assert _program() == "venv/bin/podembed"
    monkeypatch.setenv("PATH", f"{exe.parent}:/usr/bin:/bin")  # activated
    assert _program() == "podembed"


def test_a_mongodb_source_tells_an_unknown_episode_too(mongo: MongoEnv, tmp_path: Path) -> None:
    load_chunks(mongo, sample_rows(n=40))
    raw = mongo_raw(mongo, dict(MODEL), tmp_path / "out")
    raw["executor"] = {"kind": "gated"}
    toml = tmp_path / "m.toml"
    toml.write_text(to_toml(raw), encoding="utf-8")
    code, out = _invoke("ingest", "pc-astro-ep2", "--config", str(toml))
    assert code == 2, out
    assert "episode pc-astro-ep2: no chunk in the source has this id (did you mean pc-astro-ep02" in out, out
    code, out = _invoke("reindex", "--config", str(toml), "--episode", "pc-astro-ep02")
    assert code == 0 and "19 embedded" in out, out
