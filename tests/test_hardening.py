"""Issue 19 (hardening, third pass): bad values, bad folders, bad documents, full disks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def _numeric_keys() -> list[tuple[type, str, str, dict[str, Any], type]]:
    """(Options class, section, field, the table's required keys, int or float) for every
    numeric setting of the schema: every section and every technology's options."""
    import dataclasses
    import typing

    from pipeline import config, registry

    sections: list[tuple[type, str, dict[str, Any]]] = [
        (config.ModelConfig, "model", {"id": "m", "dimension": 8}),
        (config.BatchingConfig, "batching", {}),
        (config.CostConfig, "cost", {}),
        (config.ReportConfig, "report", {}),
        (config.FieldMap, "source.fields", {}),
    ]
    for role, kinds in registry.ROLES.items():
        for kind in kinds:
            base = {"path": "x", "database": "d", "collection": "c"}
            sections.append((registry.resolve(role, kind).Options, f"{role}[{kind}]", base))
    keys = []
    for cls, section, base in sections:
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            kinds_ = {tp} | set(typing.get_args(tp))
            numeric = [t for t in (int, float) if t in kinds_]
            if numeric:
                required = {k: v for k, v in base.items() if k in names and k != f.name}
                keys.append((cls, section, f.name, required, numeric[0]))
    return keys


NUMERIC_KEYS = _numeric_keys()

# Keys where 0 cannot work (elsewhere 0 means "off", "never" or "the default").
ZERO_INVALID = {
    "model.dimension", "model.max_seq_length",
    "batching.window_chunks", "batching.token_budget", "batching.max_batch_size", "batching.queue_depth",
    "batching.shard_max_s",
    "cost.tokens_per_second", "cost.devices",
    "source[mongo].batch_size", "source[mongo].server_selection_timeout_ms",
    "sink[mongo].write_batch", "sink[mongo].server_selection_timeout_ms",
    "checkpoint[mongo].lease_ttl_s", "checkpoint[mongo].server_selection_timeout_ms",
    "executor[modal].max_containers", "executor[modal].inflight_per_container",
    "executor[modal].gpu_cpu", "executor[modal].job_cpu",
    "executor[modal].gpu_memory_mib", "executor[modal].job_memory_mib",
    "executor[modal].batch_timeout_s", "executor[modal].startup_timeout_s",
    "executor[modal].backfill_timeout_s", "executor[modal].ingest_timeout_s",
    "executor[modal].trigger_per_minute", "executor[modal].scaledown_window_s",
}  # fmt: skip


def test_the_walk_covers_every_numeric_key() -> None:
    names = {f"{section}.{name}" for _, section, name, _, _ in NUMERIC_KEYS}
    assert len(names) >= 40
    assert names >= ZERO_INVALID, ZERO_INVALID - names


@pytest.mark.parametrize(
    ("cls", "section", "name", "required", "kind"),
    NUMERIC_KEYS,
    ids=[f"{s}.{n}" for _, s, n, _, _ in NUMERIC_KEYS],
)
def test_every_numeric_setting_is_finite_and_in_range(
    cls: type, section: str, name: str, required: dict[str, Any], kind: type
) -> None:
    """Issue 19.6: nan, inf and negatives were accepted (a spinning loop, a nonsense plan) or
    crashed with a traceback; each must be a ConfigError (exit 2) that names the key."""
    from pipeline.errors import ConfigError
    from pipeline.toml_schema import from_table

    prefix = section.split("[")[0]
    bad: list[Any] = [float("nan"), float("inf"), float("-inf"), -1, -1.5]
    if f"{section}.{name}" in ZERO_INVALID:
        bad.append(0)
    for value in bad:
        with pytest.raises(ConfigError) as caught:
            from_table(cls, {**required, name: value}, prefix)
        message = str(caught.value)
        assert message.startswith(f"{prefix}.") and name in message.split(":")[0], (value, message)
