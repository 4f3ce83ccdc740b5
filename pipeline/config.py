"""The run configuration: TOML under ``configs/``, validated strictly.

Each section is a dataclass. ``source``, ``sink``, ``checkpoint`` and ``executor``
choose an implementation with ``kind``; the rest of their keys are validated by that
implementation's own ``Options`` dataclass, so a new source brings its own settings.
Secrets never live in the file: a section names the environment variable that holds them.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from pipeline import registry
from pipeline.errors import ConfigError
from pipeline.toml_schema import from_table

DEFAULT_CONFIG = Path("configs/local.toml")
Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(slots=True)
class FieldMap:
    """Names of the source's fields; an empty string means the source lacks that field."""

    chunk_id: str = "chunk_id"
    episode_id: str = "episode_id"
    text: str = "text"
    podcast_id: str = "podcast_id"
    chunk_index: str = "chunk_index"
    start_s: str = "start_s"
    end_s: str = "end_s"
    published_at: str = "published_at"

    def validate(self, prefix: str) -> None:
        """Required fields must be mapped."""
        for name in ("chunk_id", "episode_id", "text"):
            if not getattr(self, name):
                raise ConfigError(f"{prefix}.{name}: must name a field (it is required)")

    def mapped(self) -> dict[str, str]:
        """Our name -> source name, for the fields the source has."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


@dataclass(slots=True)
class ModelConfig:
    """Which model embeds, and exactly how (everything here but ``device`` and ``precision``
    goes into the model fingerprint)."""

    id: str
    dimension: int
    package: str = ""
    path: str = ""
    instruction: str = "Represent the podcast transcript for retrieval:"
    query_instruction: str = "Represent the podcast question for retrieving relevant transcript passages:"
    max_seq_length: int = 512
    normalize: bool = True
    precision: Precision = "fp32"
    device: str = "auto"
    # The attention kernel. "eager" is 1.28x faster than "sdpa" for T5 on GPUs: T5's position
    # bias makes SDPA fall back to an fp32 math path (BENCHMARKS.md section 5). "fused" and
    # "flex" (T5 only, pipeline/t5_attention.py) put the bias into a fused kernel. "auto" is
    # transformers' default until a GPU run has measured which is fastest.
    attention: Literal["auto", "eager", "sdpa", "fused", "flex"] = "auto"
    # torch.compile the encoder (pipeline/encoder_shapes.py); pays off on GPUs only.
    compile: bool = False
    # Round each batch's padded length up to this multiple (0: 16 when compile is on, else off),
    # so a compiled encoder sees few shapes and the attention mask rows stay aligned.
    seq_multiple: int = 0

    def validate(self, prefix: str) -> None:
        """Reject values that cannot work."""
        if self.package and self.path:
            raise ConfigError(f"{prefix}.package / {prefix}.path: set one of them, not both")
        # INSTRUCTOR measures the instruction stripped; a stray space would shift pooling.
        self.instruction = self.instruction.strip()
        self.query_instruction = self.query_instruction.strip()
        if not self.instruction:
            raise ConfigError(f"{prefix}.instruction: must not be empty (INSTRUCTOR needs one)")
        if self.max_seq_length < 8:
            raise ConfigError(f"{prefix}.max_seq_length: must be at least 8")
        if self.dimension < 1:
            raise ConfigError(f"{prefix}.dimension: must be positive")
        if self.seq_multiple < 0 or self.seq_multiple > self.max_seq_length:
            raise ConfigError(
                f"{prefix}.seq_multiple: must be between 0 (off) and max_seq_length "
                f"({self.max_seq_length}); 64 is a good value"
            )
        check_fp16(self, prefix)


def is_t5_model(model: ModelConfig) -> bool:
    """INSTRUCTOR, GTR and sentence-T5 models are T5 encoders."""
    name = f"{model.id} {model.path}".lower()
    if any(tag in name for tag in ("instructor", "t5", "gtr-")):
        return True
    if model.path:
        cfg = Path(model.path) / "config.json"
        try:
            return json.loads(cfg.read_text(encoding="utf-8")).get("model_type") == "t5"
        except (OSError, ValueError):
            return False
    return False


def check_fp16(model: ModelConfig, prefix: str = "model") -> None:
    """T5 encoders overflow in float16 (NaN or silently wrong vectors): refuse, say why."""
    if model.precision == "fp16" and is_t5_model(model):
        raise ConfigError(
            f"{prefix}.precision: fp16 is not allowed for {model.id!r}: T5 encoders overflow in "
            'float16 (NaN or silently wrong vectors). Use precision = "bf16" on the GPU '
            '(the A10G supports it) or "fp32".'
        )


@dataclass(slots=True)
class BatchingConfig:
    """How chunks are windowed and cut into batches."""

    window_chunks: int = 4096
    token_budget: int = 32768
    max_batch_size: int = 256
    queue_depth: int = 4

    def validate(self, prefix: str) -> None:
        """All sizes must be positive."""
        for name in ("window_chunks", "token_budget", "max_batch_size", "queue_depth"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}.{name}: must be at least 1")


@dataclass(slots=True)
class CostConfig:
    """Price of device time, for run reports and ``plan`` estimates."""

    device: str = "A10G"
    hourly_usd: float = 1.10
    # Used by `plan` when no earlier run has measured the speed on this target.
    tokens_per_second: float = 4000.0
    devices: int = 1

    def validate(self, prefix: str) -> None:
        """Prices and rates must make sense."""
        if self.hourly_usd < 0:
            raise ConfigError(f"{prefix}.hourly_usd: must not be negative")
        if self.tokens_per_second <= 0:
            raise ConfigError(f"{prefix}.tokens_per_second: must be positive")
        if self.devices < 1:
            raise ConfigError(f"{prefix}.devices: must be at least 1")


@dataclass(slots=True)
class ReportConfig:
    """Where run reports go."""

    dir: str = "data/out/runs"


@dataclass(slots=True)
class Section:
    """A pluggable part: its kind and that kind's validated options."""

    kind: str
    options: Any


@dataclass(slots=True)
class Config:
    """A whole, validated run configuration."""

    source: Section
    sink: Section
    checkpoint: Section
    executor: Section
    model: ModelConfig
    fields: FieldMap = field(default_factory=FieldMap)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    path: str = ""


def _section(role: str, table: Any, default_kind: str | None = None) -> Section:
    if table is None:
        table = {}
    if not isinstance(table, dict):
        raise ConfigError(f"[{role}]: expected a table")
    table = dict(table)
    kind = table.pop("kind", default_kind)
    if not isinstance(kind, str):
        raise ConfigError(f"{role}.kind: required (choose one of: {', '.join(registry.ROLES[role])})")
    impl = registry.resolve(role, kind)
    options = from_table(impl.Options, table, role)
    return Section(kind=kind, options=options)


_TOP_LEVEL = {"source", "sink", "checkpoint", "executor", "model", "batching", "cost", "report"}


def parse_config(raw: dict[str, Any], path: str = "<memory>") -> Config:
    """Validate a parsed TOML document and return a :class:`Config`."""
    unknown = sorted(set(raw) - _TOP_LEVEL)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section (allowed: {', '.join(sorted(_TOP_LEVEL))})")
    for required in ("source", "sink", "model"):
        if required not in raw:
            raise ConfigError(f"[{required}]: section is missing")
    source_table = dict(raw["source"])
    fields_table = source_table.pop("fields", {})
    source = _section("source", source_table)
    fields_map = from_table(FieldMap, fields_table, "source.fields")
    sink = _section("sink", raw["sink"])
    # A sink that writes onto the source's own records checks the field names agree.
    check = getattr(sink.options, "check_fields", None)
    if callable(check):
        check(fields_map, source.kind, "sink")
    # The checkpoint store lives with the sink unless told otherwise.
    default_checkpoint = {"parquet": "sqlite"}.get(sink.kind, sink.kind)
    return Config(
        source=source,
        fields=fields_map,
        sink=sink,
        checkpoint=_section("checkpoint", raw.get("checkpoint"), default_checkpoint),
        executor=_section("executor", raw.get("executor"), "local"),
        model=from_table(ModelConfig, raw["model"], "model"),
        batching=from_table(BatchingConfig, raw.get("batching", {}), "batching"),
        cost=from_table(CostConfig, raw.get("cost", {}), "cost"),
        report=from_table(ReportConfig, raw.get("report", {}), "report"),
        path=path,
    )


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a TOML config; ``None`` means ``configs/local.toml``."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = " (run podembed from the project folder, or pass --config)" if path is None else ""
        raise ConfigError(f"config file not found: {p}{hint}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    try:
        return parse_config(raw, str(p))
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def with_executor(config: Config, kind: str) -> Config:
    """A copy of ``config`` whose executor is ``kind`` with that kind's default options."""
    if kind == config.executor.kind:
        return config
    import dataclasses

    return dataclasses.replace(config, executor=_section("executor", {"kind": kind}))


def secret_from_env(var: str, what: str) -> str:
    """Read a secret from the environment, or fail with a message that says which variable."""
    value = os.environ.get(var, "")
    if not value:
        raise ConfigError(
            f"{what}: environment variable {var} is not set "
            "(export it; secrets are never read from the config file)"
        )
    return value
