"""The GPU inside a Modal container: is it there, is it the one asked for, is it still sane.

- :func:`require_cuda` runs when a container starts (after the memory snapshot is
  restored: nothing may call into CUDA before, or torch caches "no GPU" for the life of
  the process). No usable CUDA device is a start-up failure, never a silent CPU fallback.
- :func:`gpu_matches` tells whether a device name (``torch.cuda.get_device_name()``) is
  the GPU type the config names in Modal's terms (``"A10G"``, ``"A100-80GB"``, ``"H100!"``),
  through one table of equivalent names (:data:`EQUIVALENT_GPUS`).
- :func:`classify_failure` sorts an exception from the model: an out-of-memory error is
  the batch's fault (split it and retry), any other CUDA or driver error is the
  container's (it must leave so Modal starts a fresh one), the rest is the batch's.
"""

from __future__ import annotations

import re
from typing import Literal

#: Names that mean one GPU type, in Modal's terms and in CUDA's. Modal's docs call the
#: A10G "A10" and its containers may report either, so every name of a group matches every
#: other, both ways: configured "A10G" accepts a device named "NVIDIA A10", and "A10"
#: accepts "NVIDIA A10G". One table, used by the client's check, the container's start-up
#: check and the ``[cost].device`` check.
EQUIVALENT_GPUS: tuple[tuple[str, ...], ...] = (("A10G", "A10"),)

#: Messages of CUDA/driver errors after which the process's CUDA context is unusable.
_FATAL = re.compile(
    r"CUDA error|CUDA driver|cuda runtime error|CUBLAS_STATUS|CUDNN_STATUS|cuDNN error|"
    r"device-side assert|illegal memory access|illegal instruction|unspecified launch failure|"
    r"misaligned address|uncorrectable ECC|NVML|NCCL error|CUDA-capable device|"
    r"no kernel image is available|GPU is lost|Xid",
    re.IGNORECASE,
)
_OOM = re.compile(r"out of memory|CUBLAS_STATUS_ALLOC_FAILED|OutOfMemory", re.IGNORECASE)

Failure = Literal["oom", "fatal", "batch"]


class GpuUnavailable(RuntimeError):
    """No usable CUDA device in a container that must embed on one."""


class GpuFault(RuntimeError):
    """A CUDA or driver error that leaves this process's GPU unusable."""


def require_cuda() -> tuple[str, str]:
    """``("cuda", device name)``, after a real kernel ran on the device; else
    :class:`GpuUnavailable` saying why (no driver, a wheel/driver mismatch, a poisoned
    CUDA state from a call before the snapshot)."""
    import torch

    if not torch.cuda.is_available():
        raise GpuUnavailable(
            f"no usable CUDA device (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none'}; device count {torch.cuda.device_count()}): refusing to "
            "embed on the CPU. Check the GPU request, the torch wheel against the driver, and that "
            "nothing touched CUDA before the memory snapshot."
        )
    try:
        name = torch.cuda.get_device_name(0)
        probe = torch.arange(8, device="cuda", dtype=torch.float32)
        total = float((probe * 2).sum().item())  # a kernel launch and a copy back
    except Exception as exc:
        raise GpuUnavailable(f"CUDA is present but unusable: {type(exc).__name__}: {exc}") from exc
    if total != 56.0:
        raise GpuUnavailable(f"CUDA device {name!r} computed a wrong result ({total} for 56.0)")
    return "cuda", name


def _tokens(text: str) -> set[str]:
    return {t for t in re.split(r"[^A-Z0-9]+", text.upper()) if t}


def gpu_matches(configured: str, device_name: str | None) -> bool:
    """Whether ``device_name`` (as CUDA reports it) is the GPU type Modal was asked for.

    ``"A10G"`` matches ``"NVIDIA A10G"``; ``"A100-80GB"`` needs both ``A100`` and ``80GB``
    in the name; a count (``":2"``) and Modal's no-upgrade mark (``"!"``) are ignored.
    """
    if not device_name:
        return False
    names = _tokens(device_name)
    for candidate in equivalent_names(configured):
        wanted = _tokens(candidate)
        if wanted and wanted <= names:
            return True
    return False


def gpu_type(name: str) -> str:
    """A Modal GPU string without its count (``":2"``) and no-upgrade mark (``"!"``), upper case."""
    return name.strip().upper().split(":", 1)[0].rstrip("!")


def equivalent_names(name: str) -> tuple[str, ...]:
    """Every name of the GPU type ``name`` (itself first), from :data:`EQUIVALENT_GPUS`."""
    base = gpu_type(name)
    for group in EQUIVALENT_GPUS:
        if base in group:
            return (base, *(n for n in group if n != base))
    return (base,)


def same_gpu_type(a: str, b: str) -> bool:
    """Whether two Modal GPU strings name one type (``"A10G"`` and ``"A10"`` do)."""
    return gpu_type(b) in equivalent_names(a)


def classify_failure(exc: BaseException) -> Failure:
    """``"oom"`` (split the batch), ``"fatal"`` (the container must go) or ``"batch"``."""
    try:
        import torch

        oom_types: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError,)
        accelerator = getattr(torch, "AcceleratorError", None)  # torch >= 2.8: CUDA errors
    except ImportError:  # pragma: no cover - torch is always there in a container
        oom_types, accelerator = (), None
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, (*oom_types, MemoryError)) or (isinstance(exc, RuntimeError) and _OOM.search(text)):
        return "oom"
    if isinstance(exc, GpuFault) or (accelerator is not None and isinstance(exc, accelerator)):
        return "fatal"
    if isinstance(exc, RuntimeError) and _FATAL.search(text):
        return "fatal"
    return "batch"
