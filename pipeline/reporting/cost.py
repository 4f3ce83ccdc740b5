"""Every cost formula of podembed, and the padding ratio, in one place.

Run reports (:mod:`pipeline.reporting.report`) and ``plan`` estimates (:mod:`pipeline.reporting.planning`)
both price time with these functions, so a measured night and its forecast are always
comparable, part by part.

Two figures:

- the **device cost**: ``device_s`` (compute + model loads, as measured where the model
  runs) at the GPU's hourly price. What the GPUs worked.
- the **billed estimate** (:class:`Bill`): what a cloud like Modal charges for the same
  run. A GPU container is billed from its start until it stops, failed attempts included,
  and for the CPU cores and memory it reserves (the higher of reserved and used); the job
  container that runs the pipeline is billed too. Its parts:

  ===========  ==========================================================  =========
  part         seconds                                                     source
  ===========  ==========================================================  =========
  compute      batches embedded or failed in the container                 measured
  load         model loads (once per container)                            measured
  boot         container start-up beyond the load (from process start)     measured
  failed       attempts that crashed or timed out, dispatch to failure,    estimated
               bounded by the timeout (no timings come back from them)
  overhead     container time between and around batches: input dispatch,  measured
               (de)serialisation, waiting for the next input (each
               container's ready-to-last-answer span minus its compute)
  idle         containers started x the scale-down window (not those       assumed
               whose start-up failed: they exit)
  job          the job container, for the run's wall time                  measured
  ===========  ==========================================================  =========

  Containers counted are every one started for the run, not only those that answered: a
  failed start (no GPU, the wrong GPU) or a late scale-up that never got a batch is billed
  for its start-up (Modal's containers record themselves when they start).

  GPU-container seconds are priced at GPU + reserved cores + reserved memory; job seconds
  at the job's cores + memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

#: Parts of a bill, in the order reports print them.
PARTS = ("compute", "load", "boot", "failed", "overhead", "idle", "job")


def padding_ratio(padded_tokens: int, real_tokens: int) -> float:
    """Padded over real tokens: 1.0 means no padding at all (rounded for reports)."""
    return round(padded_tokens / real_tokens, 4) if real_tokens else 1.0


def device_cost_usd(device_s: float, hourly_usd: float) -> float:
    """Device-seconds at an hourly price: the single figure reports carried before the bill."""
    return device_s / 3600.0 * hourly_usd


class _CostSettings(Protocol):
    hourly_usd: float
    cpu_core_usd_per_s: float
    memory_gib_usd_per_s: float


@dataclass(slots=True, frozen=True)
class Prices:
    """Per-second prices (``[cost]``): GPU, one CPU core, one GiB of memory."""

    gpu_per_s: float = 0.0
    cpu_core_per_s: float = 0.0
    memory_gib_per_s: float = 0.0

    @classmethod
    def of(cls, cost: _CostSettings) -> Prices:
        """From a ``[cost]`` section."""
        return cls(cost.hourly_usd / 3600.0, cost.cpu_core_usd_per_s, cost.memory_gib_usd_per_s)

    @classmethod
    def gpu_only(cls, hourly_usd: float) -> Prices:
        """Only the device's hourly price (a report finalized without ``[cost]``)."""
        return cls(gpu_per_s=hourly_usd / 3600.0)


@dataclass(slots=True, frozen=True)
class Footprint:
    """What a remote executor's containers reserve, and how long they linger.

    All zero for an in-process executor: the machine is yours and only device time counts.
    """

    gpu_cpu: float = 0.0  # cores reserved by each GPU container
    gpu_memory_gib: float = 0.0
    job_cpu: float = 0.0  # cores of the container running the job (0: no job container)
    job_memory_gib: float = 0.0
    idle_s: float = 0.0  # per container that served: the scale-down window
    attempt_limit_s: float = 0.0  # longest one batch can bill: timeout x attempts (0: unbounded)


@dataclass(slots=True)
class Usage:
    """What an executor saw of the machines that served a run, beyond per-batch timings."""

    devices: dict[str, int] = field(default_factory=dict)  # device name -> batches it answered
    containers: int = 0  # distinct containers (or processes) that answered
    boot_s: float = 0.0  # container start-up beyond the model load, as measured in them
    failed_s: float = 0.0  # attempts that returned no timings: dispatch to failure, bounded
    failed_attempts: int = 0
    overhead_s: float = 0.0  # container time around and between batches (measured spans)
    failed_starts: int = 0  # containers (among ``containers``) whose start-up failed
    footprint: Footprint = field(default_factory=Footprint)


@dataclass(slots=True)
class Bill:
    """Seconds and dollars by part (see the module docstring for what is measured)."""

    compute_s: float = 0.0
    load_s: float = 0.0
    boot_s: float = 0.0
    failed_s: float = 0.0
    overhead_s: float = 0.0
    idle_s: float = 0.0
    job_s: float = 0.0
    containers: int = 0
    failed_attempts: int = 0
    failed_starts: int = 0
    gpu_container_s: float = 0.0
    gpu_usd: float = 0.0
    gpu_cpu_usd: float = 0.0
    gpu_memory_usd: float = 0.0
    job_usd: float = 0.0
    total_usd: float = 0.0
    parts_usd: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)

    def line(self) -> str:
        """``$0.8712 = compute $0.72 + load $0.01 + ...`` (parts that cost something)."""
        parts = " + ".join(f"{p} ${self.parts_usd[p]:.4f}" for p in PARTS if self.parts_usd.get(p))
        return f"${self.total_usd:.4f}" + (f" = {parts}" if parts else "")


def make_bill(
    *,
    compute_s: float,
    load_s: float,
    boot_s: float = 0.0,
    failed_s: float = 0.0,
    failed_attempts: int = 0,
    containers: int = 0,
    failed_starts: int = 0,
    overhead_s: float = 0.0,
    job_s: float = 0.0,
    footprint: Footprint | None = None,
    prices: Prices,
) -> Bill:
    """Price a run (measured or planned) part by part; see the module docstring."""
    fp = footprint or Footprint()
    idle_s = max(0, containers - failed_starts) * fp.idle_s
    job_s = job_s if fp.job_cpu or fp.job_memory_gib else 0.0
    gpu_rate = (
        prices.gpu_per_s + fp.gpu_cpu * prices.cpu_core_per_s + fp.gpu_memory_gib * prices.memory_gib_per_s
    )
    job_rate = fp.job_cpu * prices.cpu_core_per_s + fp.job_memory_gib * prices.memory_gib_per_s
    seconds = {
        "compute": compute_s,
        "load": load_s,
        "boot": boot_s,
        "failed": failed_s,
        "overhead": overhead_s,
        "idle": idle_s,
    }
    gpu_container_s = sum(seconds.values())
    parts_usd = {p: round(s * gpu_rate, 6) for p, s in seconds.items()}
    parts_usd["job"] = round(job_s * job_rate, 6)
    bill = Bill(
        compute_s=round(compute_s, 3),
        load_s=round(load_s, 3),
        boot_s=round(boot_s, 3),
        failed_s=round(failed_s, 3),
        overhead_s=round(overhead_s, 3),
        idle_s=round(idle_s, 3),
        job_s=round(job_s, 3),
        containers=containers,
        failed_attempts=failed_attempts,
        failed_starts=failed_starts,
        gpu_container_s=round(gpu_container_s, 3),
        gpu_usd=round(gpu_container_s * prices.gpu_per_s, 6),
        gpu_cpu_usd=round(gpu_container_s * fp.gpu_cpu * prices.cpu_core_per_s, 6),
        gpu_memory_usd=round(gpu_container_s * fp.gpu_memory_gib * prices.memory_gib_per_s, 6),
        job_usd=parts_usd["job"],
        parts_usd=parts_usd,
    )
    bill.total_usd = round(gpu_container_s * gpu_rate + job_s * job_rate, 6)
    return bill


def bill_usage(*, compute_s: float, load_s: float, job_s: float, usage: Usage, prices: Prices) -> Bill:
    """The bill of a finished run: its measured timings plus what its executor saw."""
    return make_bill(
        compute_s=compute_s,
        load_s=load_s,
        boot_s=usage.boot_s,
        failed_s=usage.failed_s,
        failed_attempts=usage.failed_attempts,
        containers=usage.containers,
        failed_starts=usage.failed_starts,
        overhead_s=usage.overhead_s,
        job_s=job_s,
        footprint=usage.footprint,
        prices=prices,
    )


def failed_attempt_s(elapsed_s: float, limit_s: float) -> float:
    """Billed time of an attempt that came back with no timings: what elapsed between its
    dispatch and its failure, never more than the attempt limit (timeout x attempts)."""
    elapsed_s = max(0.0, elapsed_s)
    return min(elapsed_s, limit_s) if limit_s > 0 else elapsed_s
