"""The run report: counts, speed, device time, the devices that served, and what it all costs."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.engine.liveness import TMP_MARK, stale_temp_files
from pipeline.errors import ConfigError, TargetError
from pipeline.reporting.cost import Bill, Prices, Usage, bill_usage, device_cost_usd, padding_ratio


@dataclass(slots=True)
class Counts:
    """What happened to the chunks a run looked at."""

    seen: int = 0
    skipped: int = 0  # already current in the sink
    skipped_failed: int = 0  # dead-lettered before, text unchanged (use --retry-failed)
    embedded: int = 0
    stale_dropped: int = 0  # embedded, but the text changed before the write: not stored
    dead_lettered: int = 0
    truncated: int = 0
    removed: int = 0  # in the sink but no longer in the source
    pruned: int = 0
    deferred: int = 0  # left for a later run by --limit
    stopped: int = 0  # selected, but the run stopped (Ctrl-C, an error) before embedding them
    claimed_elsewhere: int = 0  # in episodes another live run was embedding: left to it
    unchanged: int = 0  # in files/documents unchanged since the last completed run: not read

    def add(self, other: Counts) -> None:
        """Add ``other`` into this."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(slots=True)
class RunReport:
    """Everything a run did, written as JSON under the report folder."""

    run_id: str
    command: str
    status: str
    selection: str
    source: str
    sink: str
    executor: str
    model_fingerprint: str
    instruction: str
    query_instruction: str
    started_at: str
    finished_at: str = ""
    resumed: bool = False
    sweep: str = ""  # "full (why)" or "incremental (changes since run X)"
    counts: Counts = field(default_factory=Counts)
    shards_total: int = 0
    shards_done: int = 0
    shards_skipped_done: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    padding_ratio: float = 1.0
    batches: int = 0  # prepared (their tokens are `tokens`)
    batches_answered: int = 0  # the executor answered for (fewer when the run stopped early)
    fp32_retries: int = 0
    precision: str = ""  # what the vectors were computed in (fp32, bf16, bf16-autocast, fp16)
    precision_reason: str = ""  # e.g. "auto → fp32: cpu has no bf16 units (avx2)"
    wall_s: float = 0.0
    embed_s: float = 0.0
    chunks_per_s: float = 0.0
    tokens_per_s: float = 0.0
    device: str = "cpu"
    device_s: float = 0.0
    model_load_s: float = 0.0
    hourly_usd: float = 0.0
    cost_usd: float = 0.0  # device_s at hourly_usd: what the devices worked
    devices: dict[str, int] = field(default_factory=dict)  # device name -> batches it answered
    containers: int = 0  # GPU containers that answered (Modal)
    billed_usd: float = 0.0  # the billed estimate's total; its parts are in `bill`
    bill: Bill = field(default_factory=Bill)
    error: str | None = None
    resume_hint: str | None = None
    # Episodes left to other live runs (episode -> the run that holds it), and time spent
    # waiting for episodes other runs held (ingest and reindex wait, backfill does not).
    left_to_other_runs: dict[str, str] = field(default_factory=dict)
    claim_wait_s: float = 0.0

    def finalize(self, usage: Usage | None = None, prices: Prices | None = None) -> None:
        """Derive rates, the device cost and the billed estimate from the raw figures and
        what the executor saw (``usage``), at ``prices`` (default: the GPU price alone)."""
        self.padding_ratio = padding_ratio(self.padded_tokens, self.tokens)
        basis = self.embed_s or self.wall_s
        self.chunks_per_s = round(self.counts.embedded / basis, 2) if basis else 0.0
        self.tokens_per_s = round(self.tokens / basis, 1) if basis else 0.0
        self.cost_usd = round(device_cost_usd(self.device_s, self.hourly_usd), 6)
        usage = usage or Usage()
        self.devices, self.containers = dict(usage.devices), usage.containers
        self.bill = bill_usage(
            compute_s=max(0.0, self.device_s - self.model_load_s),
            load_s=self.model_load_s,
            job_s=self.wall_s,
            usage=usage,
            prices=prices or Prices.gpu_only(self.hourly_usd),
        )
        self.billed_usd = self.bill.total_usd
        for name in ("wall_s", "embed_s", "device_s", "model_load_s", "claim_wait_s"):
            setattr(self, name, round(getattr(self, name), 3))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    def summary(self) -> str:
        """A few lines for stderr."""
        c = self.counts
        lines = [
            f"run {self.run_id} ({self.command}, {self.selection}): {self.status}"
            + (" [resumed]" if self.resumed else ""),
            f"  chunks: {c.seen} seen, {c.embedded} embedded, {c.skipped} already current, "
            f"{c.dead_lettered} dead-lettered, {c.skipped_failed} failed before (unchanged), "
            f"{c.truncated} truncated",
        ]
        if self.sweep:
            lines.append(
                f"  sweep: {self.sweep}"
                + (f"; {c.unchanged} chunks in unchanged files/documents not read" if c.unchanged else "")
            )
        if c.stale_dropped:
            lines.append(f"  text changed while embedding (not stored, next run redoes): {c.stale_dropped}")
        if c.removed or c.pruned:
            if c.pruned:
                lines.append(f"  removed from source: {c.removed} (pruned from sink: {c.pruned})")
            else:
                lines.append(
                    f"  removed from source: {c.removed} (their vectors stay in the sink; "
                    "`backfill --prune` deletes them)"
                )
        if c.deferred:
            lines.append(f"  deferred by --limit: {c.deferred}")
        if c.stopped:
            lines.append(f"  not embedded, the run stopped first (the next run does them): {c.stopped}")
        if c.claimed_elsewhere or self.left_to_other_runs:
            runs = sorted(set(self.left_to_other_runs.values()))
            lines.append(
                f"  left to other live runs (they write them): {c.claimed_elsewhere} chunks of "
                f"{len(self.left_to_other_runs)} episodes, held by {'; '.join(runs)}"
            )
        if self.claim_wait_s >= 0.05:
            lines.append(f"  waited {self.claim_wait_s:.1f}s for episodes other runs were embedding")
        answered = (
            f" ({self.batches_answered} answered before the run stopped)"
            if self.batches_answered < self.batches
            else ""
        )
        lines.append(
            f"  tokens: {self.tokens} in {self.batches} batches{answered}, "
            f"padding ratio {self.padding_ratio:.3f}"
        )
        lines.append(
            f"  time: {self.wall_s:.1f}s wall, {self.embed_s:.1f}s embedding, "
            f"{self.chunks_per_s:.1f} chunks/s, {self.tokens_per_s:.0f} tokens/s"
        )
        lines.append(
            f"  device: {self.device_s:.1f} {self.device}-seconds = ${self.cost_usd:.4f} "
            f"at ${self.hourly_usd:.2f}/h (compute and model loads, measured)"
        )
        if self.precision_reason:
            lines.append(f"  precision: {self.precision_reason}")
        if self.devices:
            served = ", ".join(f"{name or '?'} ({n} batches)" for name, n in sorted(self.devices.items()))
            where = f" in {self.containers} containers" if self.containers else ""
            lines.append(f"  served by: {served}{where}")
        b = self.bill
        if b.containers or b.job_s or b.failed_s:
            lines.append(f"  billed (estimate): {b.line()}")
            lines.append(
                f"    GPU containers {b.gpu_container_s:.0f}s (boot {b.boot_s:.0f}s, failed attempts "
                f"{b.failed_s:.0f}s in {b.failed_attempts}, idle {b.idle_s:.0f}s), "
                f"job container {b.job_s:.0f}s"
            )
        if self.error:
            lines.append(f"  error: {self.error}")
        if self.resume_hint:
            lines.append(f"  {self.resume_hint}")
        return "\n".join(lines)


def check_report_dir(directory: str | os.PathLike[str]) -> None:
    """Create the report folder, or fail (exit 2) naming ``report.dir`` before a run starts."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "it is a file, not a folder" if isinstance(exc, FileExistsError) else exc.strerror
        raise ConfigError(f"report.dir: cannot keep run reports in {d}: {why}") from None
    if not os.access(d, os.W_OK | os.X_OK):
        raise ConfigError(f"report.dir: cannot keep run reports in {d}: not writable")
    for tmp in stale_temp_files(d):  # a run killed while writing its report
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_report(report: RunReport, directory: str | os.PathLike[str]) -> Path:
    """Write ``<dir>/<run_id>.json`` atomically; returns the path.

    Raises :class:`TargetError` (and leaves no temp file) when the disk is full.
    """
    d = Path(directory)
    path = d / f"{report.run_id}.json"
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(report.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise TargetError(
            f"report.dir: cannot write the run report {path}: {exc.strerror or exc}; "
            "free space there (or set report.dir), then rerun the same command"
        ) from None
    return path


def read_reports(directory: str | os.PathLike[str], limit: int = 5) -> list[dict[str, Any]]:
    """The newest run reports in ``directory`` (newest first)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    files = sorted(d.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    out = []
    for p in files[:limit]:
        try:
            out.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    return out
