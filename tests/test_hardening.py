"""Issue 19 (hardening, third pass): bad values, bad folders, bad documents, full disks."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs.cli import cli
from tests.helpers import config_dict, sample_rows, tiny_model, write_rows, write_toml


def _toml(tmp_path: Path, model_dir: str, rows: int = 24) -> Path:
    src = write_rows(tmp_path / "src" / "s.parquet", sample_rows(n=rows))
    return write_toml(tmp_path / "c.toml", config_dict(src, tmp_path / "out", tiny_model(model_dir)))


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["reindex", "--since", ""], "--since"),
        (["reindex", "--since", "  "], "--since"),
        (["reindex", "--episode", ""], "--episode"),
        (["reindex", "--podcast", ""], "--podcast"),
        (["ingest", ""], "EPISODE_ID"),
        (["plan", "--force", "--since", ""], "--since"),
    ],
)
def test_an_empty_value_never_means_everything(
    tmp_path: Path, tiny_model_dir: str, args: list[str], option: str
) -> None:
    """Issue 19.4: `reindex --since ""` (an unset variable) re-embedded the whole corpus."""
    toml = _toml(tmp_path, tiny_model_dir)
    result = CliRunner().invoke(cli, [*args, "--config", str(toml)])
    assert result.exit_code == 2, result.output
    assert option in result.output and "empty" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "out" / "vectors").exists() or not list((tmp_path / "out" / "vectors").iterdir())
