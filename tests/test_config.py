"""Configuration: strict validation with errors that name the key; secrets stay secret."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs.cli import cli
from pipeline.config import load_config, parse_config, secret_from_env
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _raw(**over: dict) -> dict:
    raw = {
        "source": {"kind": "parquet", "path": "x.parquet"},
        "sink": {"kind": "parquet", "path": "out"},
        "model": {"id": "m", "dimension": 8},
    }
    for k, v in over.items():
        raw[k] = v
    return raw


def test_shipped_configs_parse() -> None:
    local = load_config(ROOT / "configs" / "local.toml")
    assert local.source.kind == "parquet" and local.executor.kind == "local"
    assert local.checkpoint.kind == "sqlite"
    prod = load_config(ROOT / "configs" / "production.toml")
    assert prod.model.id == "hkunlp/instructor-xl"
    assert prod.model.dimension == 768 and prod.model.max_seq_length == 512
    assert prod.source.kind == "mongo" and prod.sink.kind == "mongo"
    assert prod.model.precision != "fp16", "T5 overflows in fp16"
    mongo_local = load_config(ROOT / "configs" / "mongo_local.toml")
    assert mongo_local.sink.kind == "mongo" and mongo_local.executor.kind == "local"
    assert mongo_local.sink.options.vector_field != prod.sink.options.vector_field


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_raw(model={"id": "m", "dimension": 8, "max_seq_lenght": 3}), "model.max_seq_lenght: unknown key"),
        (_raw(model={"id": "m", "dimension": "768"}), "model.dimension: expected an integer"),
        (_raw(model={"id": "m", "dimension": 8, "precision": "fp8"}), "model.precision: must be one of"),
        (
            _raw(model={"id": "m", "dimension": 8, "normalize": "yes"}),
            "model.normalize: expected true or false",
        ),
        (_raw(batching={"token_budget": 0}), "batching.token_budget: must be at least 1"),
        (_raw(source={"kind": "csv", "path": "x"}), "source.kind: unknown kind 'csv'"),
        (_raw(source={"kind": "parquet", "path": "x", "colour": 1}), "source.colour: unknown key"),
        (
            _raw(source={"kind": "parquet", "path": "x", "fields": {"txt": "t"}}),
            "source.fields.txt: unknown key",
        ),
        (
            _raw(source={"kind": "parquet", "path": "x", "fields": {"text": ""}}),
            "source.fields.text: must name",
        ),
        (_raw(cost={"hourly_usd": -1}), "cost.hourly_usd: must not be negative"),
        (
            _raw(model={"id": "m", "dimension": 8, "instruction": "  "}),
            "model.instruction: must not be empty",
        ),
        ({**_raw(), "extra": {}}, "extra: unknown section"),
        ({"sink": {"kind": "parquet", "path": "o"}, "model": {"id": "m", "dimension": 8}}, "[source]"),
        (_raw(model={"dimension": 8}), "model.id: required key is missing"),
        (_raw(model={"id": "m", "dimension": 8, "device": "tpu"}), "model.device: 'tpu' is not a device"),
        (_raw(model={"id": "m", "dimension": 8, "device": "cuda:x"}), "model.device: 'cuda:x'"),
    ],
)
def test_bad_config_names_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert message in str(info.value)


def test_instruction_is_stripped_because_instructor_counts_it_stripped() -> None:
    cfg = parse_config(_raw(model={"id": "m", "dimension": 8, "instruction": " Represent X: "}))
    assert cfg.model.instruction == "Represent X:"


def test_cli_bad_config_exits_2_with_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[source]\nkind="parquet"\npath="x"\n[sink]\nkind="parquet"\npath="o"\n'
        '[model]\nid="m"\ndimension=8\nbatch=3\n'
    )
    result = CliRunner().invoke(cli, ["backfill", "--config", str(bad)])
    assert result.exit_code == 2
    assert "model.batch: unknown key" in result.output
    missing = CliRunner().invoke(cli, ["plan", "--config", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "config file not found" in missing.output
    not_toml = tmp_path / "x.toml"
    not_toml.write_text("[source\n")
    assert CliRunner().invoke(cli, ["status", "--config", str(not_toml)]).exit_code == 2
    usage = CliRunner().invoke(cli, ["backfill", "--limit", "0"])
    assert usage.exit_code == 2


def test_secret_comes_from_the_environment_and_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PODEMBED_TEST_URI", raising=False)
    with pytest.raises(ConfigError, match="PODEMBED_TEST_URI is not set"):
        secret_from_env("PODEMBED_TEST_URI", "source.uri_env")
    monkeypatch.setenv("PODEMBED_TEST_URI", "mongodb://u:hunter2@h")
    assert secret_from_env("PODEMBED_TEST_URI", "source.uri_env").endswith("@h")


def test_in_place_mongo_sink_must_name_the_sources_id_and_text_fields() -> None:
    raw = {
        "source": {
            "kind": "mongo",
            "uri_env": "X",
            "database": "d",
            "collection": "c",
            "fields": {"chunk_id": "segment_id"},
        },
        "sink": {"kind": "mongo", "uri_env": "X", "database": "d", "collection": "c"},
        "model": {"id": "m", "dimension": 8},
    }
    with pytest.raises(ConfigError, match=r"sink\.id_field: is '_id' but source\.fields\.chunk_id"):
        parse_config(raw)
    raw["sink"]["id_field"] = "segment_id"
    assert parse_config(raw).sink.options.id_field == "segment_id"


def test_devices_torch_understands_are_accepted() -> None:
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert parse_config(_raw(model={"id": "m", "dimension": 8, "device": device})).model.device == device


def test_cli_exits_2_for_a_config_that_is_not_utf8_or_names_an_unknown_device(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(
        b'[source]\nkind="parquet"\npath="x"\n[sink]\nkind="parquet"\npath="o"\n'
        b'[model]\nid="m"\ndimension=8\ninstruction="Repr\xe9sente:"\n'
    )
    result = CliRunner().invoke(cli, ["backfill", "--config", str(latin1)])
    assert result.exit_code == 2, result.output
    assert "latin1.toml: not UTF-8 text (byte 108, line 10)" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)

    tpu = tmp_path / "tpu.toml"
    tpu.write_text(
        '[source]\nkind="parquet"\npath="x"\n[sink]\nkind="parquet"\npath="o"\n'
        '[model]\nid="m"\ndimension=8\ndevice="tpu"\n'
    )
    result = CliRunner().invoke(cli, ["status", "--config", str(tpu)])
    assert result.exit_code == 2, result.output
    assert "model.device: 'tpu' is not a device" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
