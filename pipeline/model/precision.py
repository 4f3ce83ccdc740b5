"""Which precision the model computes in: ``model.precision = "auto"`` resolved for a device.

``auto`` means bfloat16 where the device has native bf16 matrix units, fp32 elsewhere:

- CUDA GPUs of compute capability 8.0 or newer (A100, A10G, L4, H100, ...) have bf16 tensor
  cores: the weights are cast to bf16 (what T5 was trained in; half the memory of fp32).
- CPUs with AMX-BF16 or AVX512-BF16 (Intel Sapphire Rapids and later, AMD Zen 4 and later):
  ``torch.autocast`` with fp32 weights, so the matrix products run in bf16 and the rest
  (layer norms, softmax, pooling) in fp32. Measured on a Xeon with AMX: 2-3x faster than fp32
  at cosine >= 0.99996 to the fp32 vectors; bf16 *weights* were 3.3x faster but only reached
  cosine 0.998, below the 0.9999 bar, so ``auto`` does not use them on CPUs.
- Anything else (CPUs with AVX2 only, older GPUs, other devices): fp32. Emulated bf16 is about
  5x slower than fp32 on an AVX2 CPU.

The decision itself (:func:`resolve`) is a pure function of the facts about the device, so it
is tested for both kinds of CPU without the hardware; :func:`detect` gathers those facts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

AUTO = "auto"
#: ``bf16`` with fp32 weights under ``torch.autocast``; what ``auto`` picks on bf16 CPUs.
BF16_AUTOCAST = "bf16-autocast"
#: CPU flags (``/proc/cpuinfo`` names) of native bf16 matrix instructions.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
#: bf16 tensor cores arrived with Ampere (compute capability 8.0).
MIN_CUDA_BF16 = (8, 0)
#: Compute capability of the GPUs Modal offers, so ``plan`` can say what a remote GPU will use.
GPU_CAPABILITY: dict[str, tuple[int, int]] = {
    "T4": (7, 5),
    "V100": (7, 0),
    "A10": (8, 6),
    "A10G": (8, 6),
    "A100": (8, 0),
    "L4": (8, 9),
    "L40S": (8, 9),
    "H100": (9, 0),
    "H200": (9, 0),
    "B200": (10, 0),
}


@dataclass(frozen=True, slots=True)
class Resolved:
    """The precision a model runs in on one device, and why."""

    requested: str  # what the config says: auto, fp32, bf16, bf16-autocast, fp16
    dtype: str  # what the matrix products run in: fp32, bf16, fp16 ("" = not known yet)
    autocast: bool  # True: fp32 weights, matrix products in ``dtype`` under torch.autocast
    reason: str

    @property
    def weights(self) -> str:
        """The dtype the weights are stored in."""
        return "fp32" if self.autocast else self.dtype

    @property
    def label(self) -> str:
        """``fp32``, ``bf16``, ``bf16-autocast`` or ``fp16``."""
        return f"{self.dtype}-autocast" if self.autocast else self.dtype

    @property
    def reduced(self) -> bool:
        """Whether anything runs below fp32 (so the fp32 fallback applies)."""
        return self.dtype not in ("fp32", "")

    def describe(self) -> str:
        """``auto → fp32: cpu has no bf16 units (avx2)``, or ``bf16: set in the config``."""
        if self.requested == AUTO:
            return f"auto → {self.label or '?'}: {self.reason}"
        return f"{self.label}: {self.reason}"


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags in the text of ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


def cpu_bf16_units(flags: Iterable[str]) -> list[str]:
    """Which of :data:`CPU_BF16_FLAGS` are among ``flags``."""
    have = set(flags)
    return [f for f in CPU_BF16_FLAGS if f in have]


def resolve(
    requested: str,
    device: str,
    *,
    cuda_capability: tuple[int, int] | None = None,
    cpu_flags: Iterable[str] = (),
    cpu_capability: str = "",
) -> Resolved:
    """Decide the precision for ``device`` from facts about it (pure; no hardware needed).

    ``cuda_capability`` is the GPU's compute capability, ``cpu_flags`` the CPU's feature
    flags, ``cpu_capability`` what ``torch.backends.cpu.get_cpu_capability()`` says (AVX2,
    AVX512, ...; named in the reason when the CPU has no bf16 units).
    """
    if requested != AUTO:
        if requested == BF16_AUTOCAST:
            return Resolved(requested, "bf16", True, "set in the config")
        return Resolved(requested, requested, False, "set in the config")
    kind = device.split(":", 1)[0]
    if kind == "cuda":
        if cuda_capability is None:
            return Resolved(AUTO, "fp32", False, "cuda compute capability unknown")
        cap = ".".join(map(str, cuda_capability))
        if tuple(cuda_capability) >= MIN_CUDA_BF16:
            return Resolved(AUTO, "bf16", False, f"cuda compute capability {cap} has bf16 tensor cores")
        return Resolved(AUTO, "fp32", False, f"cuda compute capability {cap} has no bf16 tensor cores")
    if kind == "cpu":
        units = cpu_bf16_units(cpu_flags)
        if units:
            return Resolved(AUTO, "bf16", True, f"cpu has {', '.join(units)}")
        return Resolved(AUTO, "fp32", False, f"cpu has no bf16 units ({cpu_capability.lower() or 'unknown'})")
    return Resolved(AUTO, "fp32", False, f"no bf16 rule for device {device!r}")


def for_gpu_name(requested: str, gpu: str) -> Resolved:
    """What a remote GPU named like Modal names it (``A10G``, ``H100:2``, ``A100-80GB``) will use."""
    name = gpu.split(":", 1)[0].strip().upper()
    cap = GPU_CAPABILITY.get(name) or GPU_CAPABILITY.get(name.split("-", 1)[0])
    if requested == AUTO and cap is None:
        return Resolved(AUTO, "", False, f"decided on the device ({gpu!r} is not in podembed's GPU table)")
    resolved = resolve(requested, "cuda", cuda_capability=cap)
    if requested == AUTO:
        return Resolved(AUTO, resolved.dtype, resolved.autocast, f"{name}: {resolved.reason}")
    return resolved


def read_cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """This machine's CPU flags: ``/proc/cpuinfo`` (Linux), else what torch can probe."""
    try:
        return parse_cpu_flags(Path(path).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        pass
    flags: set[str] = set()
    try:  # private probes, present in torch 2.x; any failure just means "not known"
        import torch

        if torch.cpu._is_avx512_bf16_supported():
            flags.add("avx512_bf16")
        if torch.cpu._is_amx_tile_supported():
            flags.add("amx_bf16")  # every AMX CPU shipped so far has AMX-BF16
    except Exception:
        pass
    return frozenset(flags)


def detect(requested: str, device: str) -> Resolved:
    """Resolve ``requested`` for ``device`` on this machine (``cpu``, ``cuda``, ``cuda:1``, ...)."""
    if requested != AUTO:
        return resolve(requested, device)
    import torch

    kind = device.split(":", 1)[0]
    if kind == "cuda":
        cap = torch.cuda.get_device_capability(device) if torch.cuda.is_available() else None
        return resolve(AUTO, device, cuda_capability=cap)
    if kind == "cpu":
        return resolve(
            AUTO,
            device,
            cpu_flags=read_cpu_flags(),
            cpu_capability=torch.backends.cpu.get_cpu_capability(),
        )
    return resolve(AUTO, device)
