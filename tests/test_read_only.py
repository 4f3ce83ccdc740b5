"""Read-only commands touch nothing; a read-only copy of an output folder can be read (19.8, 22.3).

Tests may run as root, where ``chmod`` does not stop writes: the guarantee is asserted by
listing every file (name, size, mtime) before and after, with the folder also made
read-only for a non-root run.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from jobs.cli import cli
from pipeline.engine.options import RunOptions
from pipeline.engine.runner import run
from pipeline.files.sink import read_vectors
from tests.helpers import config_dict, make_config, sample_rows, tiny_model, write_rows, write_toml


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (0, 0)
        for p in sorted(root.rglob("*"))
    }


def _chmod_tree(root: Path, writable: bool) -> None:
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        p.chmod(mode | stat.S_IWUSR if writable else mode & ~bits)


@pytest.fixture()
def backfilled(tmp_path: Path, tiny_model_dir: str) -> dict[str, Any]:
    src = write_rows(tmp_path / "src.parquet", sample_rows(episodes=2))
    out = tmp_path / "out"
    model = tiny_model(tiny_model_dir)
    assert run(make_config(src, out, model=model), RunOptions()).status == "completed"
    return {"src": src, "out": out, "model": model, "tmp": tmp_path}


def test_status_search_and_read_vectors_on_a_read_only_copy_change_nothing(
    backfilled: dict[str, Any],
) -> None:
    tmp, model = backfilled["tmp"], backfilled["model"]
    copy = tmp / "copy"
    shutil.copytree(backfilled["out"], copy)
    expected = sorted(read_vectors(backfilled["out"])["chunk_id"].to_pylist())
    raw = config_dict(backfilled["src"], copy, model)
    raw["report"] = {"dir": str(tmp / "reports")}
    toml = write_toml(tmp / "ro.toml", raw)
    before = _listing(copy)
    _chmod_tree(copy, writable=False)
    try:
        status = CliRunner().invoke(cli, ["status", "--config", str(toml), "--json"])
        assert status.exit_code == 0, status.output
        assert json.loads(status.stdout)["current"] == len(expected)
        args = ["search", "anything at all", "--config", str(toml), "--json", "-k", "3"]
        search = CliRunner().invoke(cli, args)
        assert search.exit_code == 0, search.output
        assert len(json.loads(search.stdout)["hits"]) == 3
        plan = CliRunner().invoke(cli, ["plan", "--config", str(toml)])
        assert plan.exit_code == 0, plan.output
        assert sorted(read_vectors(copy)["chunk_id"].to_pylist()) == expected
    finally:
        _chmod_tree(copy, writable=True)
    assert _listing(copy) == before, "a read-only command created or changed a file"


@pytest.mark.parametrize("command", ["status", "search", "plan"])
def test_a_wrong_sink_path_is_named_and_nothing_is_created(
    backfilled: dict[str, Any], command: str
) -> None:
    tmp = backfilled["tmp"]
    wrong = tmp / "typo" / "out"
    toml = write_toml(tmp / "wrong.toml", config_dict(backfilled["src"], wrong, backfilled["model"]))
    before = _listing(tmp)
    args = {"status": ["status"], "search": ["search", "a question"], "plan": ["plan"]}[command]
    result = CliRunner().invoke(cli, [*args, "--config", str(toml)])
    assert _listing(tmp) == before, f"{command} created something"
    if command == "plan":  # a first run's plan: everything is to embed, and nothing is created
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2, result.output
    assert str(wrong) in result.output and "does not exist" in result.output


def test_the_ledger_is_opened_mode_ro(backfilled: dict[str, Any]) -> None:
    from pipeline.errors import TargetError
    from pipeline.files.ledger import SqliteCheckpointOptions, SqliteCheckpointStore
    from pipeline.interfaces.checkpoint import SinkHome

    out = backfilled["out"]
    home = SinkHome("x", {"folder": str(out)})
    store = SqliteCheckpointStore.open(SqliteCheckpointOptions(), home, read_only=True)
    try:
        with pytest.raises(TargetError, match="read-only"):
            store.add_dead_letters("r", [])  # any write is refused before SQL
        with pytest.raises(Exception, match="readonly"):
            store.db._conn.execute("CREATE TABLE nope (x)")
    finally:
        store.close()
    assert not (out / "state.sqlite.owners").exists() or not os.listdir(out / "state.sqlite.owners")
