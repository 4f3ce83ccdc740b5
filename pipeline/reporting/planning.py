"""``plan``: what a run would do, how many tokens it is, and what it would cost. Embeds nothing."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline import registry
from pipeline.config import Config
from pipeline.engine.options import RunOptions
from pipeline.engine.shard_work import WORK_REASONS, Preparer, Rule
from pipeline.model.fingerprint import model_fingerprint
from pipeline.model.precision import Resolved
from pipeline.model.tokens import TokenCounter
from pipeline.parts import Parts
from pipeline.reporting.cost import Bill, Prices, device_cost_usd, make_bill, padding_ratio


@dataclass(slots=True)
class Plan:
    """The dry-run answer."""

    command: str
    selection: str
    fingerprint: str
    shards: int = 0
    seen: int = 0
    to_embed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    invalid: int = 0
    truncated: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    padding_ratio: float = 1.0
    batches: int = 0
    tokens_per_second: float = 0.0
    speed_from: str = ""
    devices: int = 1
    device: str = ""
    est_device_s: float = 0.0
    est_wall_s: float = 0.0
    hourly_usd: float = 0.0
    est_cost_usd: float = 0.0  # est_device_s at hourly_usd
    precision: str = ""  # what the run would compute in (fp32, bf16, bf16-autocast, fp16)
    precision_reason: str = ""  # e.g. "auto → fp32: cpu has no bf16 units (avx2)"
    containers: int = 0
    est_billed_usd: float = 0.0  # the billed estimate's total; its parts in est_bill
    est_bill: Bill = field(default_factory=Bill)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)

    def summary(self) -> str:
        """Human-readable lines."""
        why = ", ".join(f"{n} {r}" for r, n in sorted(self.reasons.items())) or "nothing"
        return "\n".join(
            [
                f"plan: {self.command} ({self.selection}) with {self.fingerprint}",
                f"  {self.seen} chunks in {self.shards} shards: {self.to_embed} to embed ({why}), "
                f"{self.skipped} current, {self.invalid} invalid, {self.truncated} would be truncated",
                f"  {self.tokens} tokens in {self.batches} batches, padding ratio {self.padding_ratio:.3f}",
                f"  at {self.tokens_per_second:.0f} padded tokens/s per {self.device} ({self.speed_from}):",
                f"  ~{self.est_device_s:.0f} device-seconds, ~{self.est_wall_s:.0f}s on {self.devices} "
                f"device(s), ~${self.est_cost_usd:.4f} at ${self.hourly_usd:.2f}/h",
                f"  precision: {self.precision_reason}",
            ]
            + (
                [f"  billed (estimate, {self.containers} containers): ~{self.est_bill.line()}"]
                if self.containers or self.est_bill.job_s
                else []
            )
        )


def planned_precision(config: Config) -> Resolved:
    """The precision a run of ``config`` would use, as its executor decides it."""
    executor_cls = registry.resolve("executor", config.executor.kind)
    return executor_cls.planned_precision(config.executor.options, config.model)


def _measured_speed(config: Config, parts: Parts, fingerprint: str, precision: str) -> float | None:
    """Padded tokens per device-second of the last completed run with this model and precision."""
    for run in parts.checkpoint.last_runs(20):
        rep = run.get("report") or {}
        if (
            run.get("status") == "completed"
            # A run in another precision ran at another speed (reports before it was recorded match).
            and rep.get("precision") in (None, "", precision)
            and rep.get("model_fingerprint") == fingerprint
            and rep.get("executor") == config.executor.kind
            and rep.get("device_s", 0) > 1.0
            and rep.get("padded_tokens", 0) > 0
        ):
            return float(rep["padded_tokens"]) / float(rep["device_s"])
    return None


def make_plan(config: Config, parts: Parts, opts: RunOptions, counter: TokenCounter | None = None) -> Plan:
    """Read the selection, decide what needs embedding, batch it, and estimate time and cost."""
    fp = model_fingerprint(config.model)
    counter = counter or TokenCounter(config.model)
    plan = Plan(command=opts.command, selection=opts.selection.describe(), fingerprint=fp)
    rule = Rule(fp, "plan", force=opts.force, retry_failed=opts.retry_failed)
    preparer = Preparer(config, parts, opts.selection, rule, counter=lambda: counter, limit=opts.limit)
    reasons: Counter[str] = Counter()
    shards = parts.source.plan(opts.selection)
    plan.shards = len(shards)
    for shard in shards:
        p = preparer.prepare(shard)
        reasons.update({r: n for r, n in p.reasons.items() if r in WORK_REASONS})
        plan.seen += p.counts.seen
        plan.to_embed += len(p.chunks)
        plan.skipped += p.counts.skipped + p.counts.skipped_failed
        plan.invalid += len(p.dead_letters)
        plan.truncated += p.counts.truncated
        plan.tokens += p.tokens
        plan.padded_tokens += p.padded_tokens
        plan.batches += len(p.batches)
    plan.reasons = dict(reasons)
    plan.padding_ratio = padding_ratio(plan.padded_tokens, plan.tokens)
    resolved = planned_precision(config)
    plan.precision, plan.precision_reason = resolved.label, resolved.describe()
    measured = _measured_speed(config, parts, fp, resolved.label)
    if measured:
        plan.tokens_per_second, plan.speed_from = measured, "measured by the last completed run"
    else:
        plan.tokens_per_second, plan.speed_from = config.cost.tokens_per_second, "cost.tokens_per_second"
    plan.device = config.cost.device
    plan.devices = max(1, min(config.cost.devices, plan.batches or 1))
    # A remote executor names what its containers reserve; an in-process one has none.
    executor_cls = registry.resolve("executor", config.executor.kind)
    footprint = executor_cls.footprint(config.executor.options)
    remote = executor_cls.remote and plan.batches > 0
    plan.containers = plan.devices if remote else 0
    compute = plan.padded_tokens / plan.tokens_per_second
    cold_start = config.cost.cold_start_s
    cold = cold_start * plan.containers
    plan.est_device_s = round(compute + cold, 1)
    plan.est_wall_s = round(compute / plan.devices + (cold_start if cold else 0.0), 1)
    plan.hourly_usd = config.cost.hourly_usd
    plan.est_cost_usd = round(device_cost_usd(plan.est_device_s, config.cost.hourly_usd), 4)
    # The same parts as a run report's bill: cold starts stand in for boot and model load,
    # no failed attempts, every container idles its full scale-down window.
    plan.est_bill = make_bill(
        compute_s=compute,
        load_s=0.0,
        boot_s=cold,
        containers=plan.containers,
        job_s=plan.est_wall_s,
        footprint=footprint,
        prices=Prices.of(config.cost),
    )
    plan.est_billed_usd = plan.est_bill.total_usd
    return plan
