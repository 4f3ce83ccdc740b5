"""The run configuration: TOML under ``configs/``, validated strictly.

Each section is a dataclass. ``source``, ``sink``, ``checkpoint`` and ``executor``
choose an implementation with ``kind``; the rest of their keys are validated by that
implementation's own ``Options`` dataclass, so a new source brings its own settings.
Secrets never live in the file: a section names the environment variable that holds them.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from pipeline import registry
from pipeline.errors import ConfigError
from pipeline.toml_schema import from_table

DEFAULT_CONFIG = Path("configs/local.toml")
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")  # what torch and the embedder accept
# "auto": bf16 where the device has bf16 matrix units, else fp32 (pipeline/model/precision.py).
Precision = Literal["auto", "fp32", "bf16", "bf16-autocast", "fp16"]


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
    # Hub models: the commit (or tag) of the weights; downloaded and loaded at exactly this
    # revision, and part of the fingerprint. "" = the hub's default branch, unpinned.
    revision: str = ""
    instruction: str = "Represent the podcast transcript for retrieval:"
    query_instruction: str = "Represent the podcast question for retrieving relevant transcript passages:"
    max_seq_length: int = 512
    normalize: bool = True
    precision: Precision = "fp32"
    device: str = "auto"
    # The attention kernel. "eager" is 1.28x faster than "sdpa" for T5 on GPUs: T5's position
    # bias makes SDPA fall back to an fp32 math path (BENCHMARKS.md section 5). "fused" and
    # "flex" (T5 only, pipeline/model/t5_attention.py) put the bias into a fused kernel. "auto" is
    # transformers' default until a GPU run has measured which is fastest.
    attention: Literal["auto", "eager", "sdpa", "fused", "flex"] = "auto"
    # torch.compile the encoder (pipeline/model/encoder_shapes.py); pays off on GPUs only.
    compile: bool = False
    # A run compiles only when it plans at least this many chunks (pipeline/model/compile_cache.py):
    # a per-episode ingest never waits for a compile.
    compile_min_chunks: int = 20000
    # Where compiled artefacts are kept between processes; "" = $HF_HOME/podembed-compile.
    compile_cache: str = ""
    # Round each batch's padded length up to this multiple (0: 16 when compile is on, else off),
    # so a compiled encoder sees few shapes and the attention mask rows stay aligned.
    seq_multiple: int = 0

    def validate(self, prefix: str) -> None:
        """Reject values that cannot work."""
        if self.package and self.path:
            raise ConfigError(f"{prefix}.package / {prefix}.path: set one of them, not both")
        self.revision = self.revision.strip()
        if self.revision and (self.package or self.path):
            raise ConfigError(
                f"{prefix}.revision: applies to hub models (model.id) only; a local model "
                "(model.package / model.path) is fingerprinted by the content of its files"
            )
        if self.revision and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}", self.revision):
            raise ConfigError(
                f"{prefix}.revision: {self.revision!r} is not a commit hash, tag or branch name"
            )
        # INSTRUCTOR measures the instruction stripped; a stray space would shift pooling.
        self.instruction = self.instruction.strip()
        self.query_instruction = self.query_instruction.strip()
        if not self.instruction:
            raise ConfigError(f"{prefix}.instruction: must not be empty (INSTRUCTOR needs one)")
        if self.max_seq_length < 8:
            raise ConfigError(f"{prefix}.max_seq_length: must be at least 8")
        if self.dimension < 1:
            raise ConfigError(f"{prefix}.dimension: must be positive")
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(
                f'{prefix}.device: {self.device!r} is not a device podembed can use; choose "auto" '
                '(the GPU when there is one), "cpu", "cuda", "cuda:N" or "mps"'
            )
        if self.compile_min_chunks < 0:
            raise ConfigError(f"{prefix}.compile_min_chunks: must be 0 or more")
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
            'float16 (NaN or silently wrong vectors). Use precision = "auto" (bf16 where the '
            'device has bf16 units, such as the A10G; fp32 elsewhere), "bf16" or "fp32".'
        )


@dataclass(slots=True)
class BatchingConfig:
    """How chunks are windowed and cut into batches."""

    window_chunks: int = 4096
    token_budget: int = 32768
    max_batch_size: int = 256
    queue_depth: int = 4
    # A shard's vectors embedded so far are written at least this often (seconds), so a
    # kill loses at most about this much embedding, however large the shard.
    write_every_s: float = 15.0

    def validate(self, prefix: str) -> None:
        """All sizes must be positive."""
        for name in ("window_chunks", "token_budget", "max_batch_size", "queue_depth"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}.{name}: must be at least 1")
        if not 1 <= self.write_every_s <= 86400:
            raise ConfigError(
                f"{prefix}.write_every_s: must be between 1 and 86400 seconds (got {self.write_every_s!r})"
            )


@dataclass(slots=True)
class IncrementalConfig:
    """How nightly backfills skip what did not change (docs/incremental.md)."""

    # False: every backfill reads the whole source (as `backfill --full` does).
    enabled: bool = True
    # Every Nth backfill is a full sweep that reads everything (catches what change
    # detection cannot: a MongoDB update that did not move the cursor field, a vector
    # deleted from the sink by hand). 0: only `backfill --full` sweeps.
    full_sweep_every: int = 7

    def validate(self, prefix: str) -> None:
        """The cadence must not be negative."""
        if self.full_sweep_every < 0:
            raise ConfigError(f"{prefix}.full_sweep_every: must be 0 (never) or a number of nights")


@dataclass(slots=True)
class CostConfig:
    """Prices, for run reports and ``plan`` estimates (formulas: ``pipeline/reporting/cost.py``).

    Defaults are Modal's published list prices (mid-2026): A10G $0.000306/s ($1.10/h),
    $0.0000131 per core-second, $0.00000222 per GiB-second."""

    device: str = "A10G"
    hourly_usd: float = 1.10  # the GPU (or, for a local run, the machine)
    cpu_core_usd_per_s: float = 0.0000131  # cores reserved by GPU and job containers
    memory_gib_usd_per_s: float = 0.00000222  # memory reserved by GPU and job containers
    # Used by `plan` when no earlier run has measured the speed on this target. The default is
    # the A10G ESTIMATE (docs/gpu.md: ~70 TFLOP/s bf16, not the A10's 125); `modal run
    # jobs/modal_app.py::gpu_check` measures the real figure.
    tokens_per_second: float = 14000.0
    devices: int = 1
    # `plan`: start-up of one GPU container, model load included (the old system measured 13.6 s).
    cold_start_s: float = 15.0

    def validate(self, prefix: str) -> None:
        """Prices and rates must make sense."""
        for name in ("hourly_usd", "cpu_core_usd_per_s", "memory_gib_usd_per_s", "cold_start_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{prefix}.{name}: must not be negative")
        if self.tokens_per_second <= 0:
            raise ConfigError(f"{prefix}.tokens_per_second: must be positive")
        if self.devices < 1:
            raise ConfigError(f"{prefix}.devices: must be at least 1")


@dataclass(slots=True)
class ReportConfig:
    """Where run reports go, and how often a run without a terminal logs its progress."""

    dir: str = "data/out/runs"
    # Seconds between progress lines when stderr is not a terminal (cron, CI, Modal logs);
    # 0 keeps only the line logged at each shard done.
    progress_every_s: float = 30.0

    def validate(self, prefix: str) -> None:
        """A finite interval of at least a second, or 0 for none."""
        every = self.progress_every_s
        if not math.isfinite(every) or every < 0 or 0 < every < 1:
            raise ConfigError(
                f"{prefix}.progress_every_s: must be 0 (no periodic lines) or at least 1 second, "
                f"got {every!r}"
            )


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
    incremental: IncrementalConfig = field(default_factory=IncrementalConfig)
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


_TOP_LEVEL = {
    "source",
    "sink",
    "checkpoint",
    "executor",
    "model",
    "batching",
    "cost",
    "report",
    "incremental",
}


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
    sink_cls = registry.resolve("sink", sink.kind)
    sink_cls.check_fields(sink.options, fields_map, source.options)
    # The checkpoint store lives with the sink unless told otherwise.
    default_checkpoint = sink_cls.default_checkpoint
    executor = _section("executor", raw.get("executor"), "local")
    cost = from_table(CostConfig, raw.get("cost", {}), "cost")
    registry.resolve("executor", executor.kind).check_cost(executor.options, cost)
    return Config(
        source=source,
        fields=fields_map,
        sink=sink,
        checkpoint=_section("checkpoint", raw.get("checkpoint"), default_checkpoint),
        executor=executor,
        model=from_table(ModelConfig, raw["model"], "model"),
        batching=from_table(BatchingConfig, raw.get("batching", {}), "batching"),
        cost=cost,
        report=from_table(ReportConfig, raw.get("report", {}), "report"),
        incremental=from_table(IncrementalConfig, raw.get("incremental", {}), "incremental"),
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
    except UnicodeDecodeError as exc:
        line = _line_of(exc.object, exc.start)
        raise ConfigError(
            f"{p}: not UTF-8 text (byte {exc.start}, line {line}): save the config as UTF-8"
        ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    try:
        return parse_config(raw, str(p))
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def _line_of(data: bytes, offset: int) -> int:
    """The 1-based line holding byte ``offset`` of ``data``."""
    return data.count(b"\n", 0, offset) + 1


def with_executor(config: Config, kind: str) -> Config:
    """A copy of ``config`` whose executor is ``kind`` with that kind's default options."""
    if kind == config.executor.kind:
        return config
    import dataclasses

    executor = _section("executor", {"kind": kind})
    gpu = getattr(executor.options, "gpu", None)
    if isinstance(gpu, str) and gpu and gpu != config.cost.device:
        # The config's [cost] prices another device (a laptop's CPU): estimates for this
        # executor use its GPU at the default list prices, never the CPU's price with the GPU.
        cost = CostConfig(device=gpu, devices=getattr(executor.options, "max_containers", 1))
        return dataclasses.replace(config, executor=executor, cost=cost)
    return dataclasses.replace(config, executor=executor)


def secret_from_env(var: str, what: str) -> str:
    """Read a secret from the environment, or fail with a message that says which variable."""
    value = os.environ.get(var, "")
    if not value:
        raise ConfigError(
            f"{what}: environment variable {var} is not set "
            "(export it; secrets are never read from the config file)"
        )
    return value
